"""A zoo model's weights in their run-time form, saved once in its folder.

Reading a GGUF's tensors, interleaving the blocks our kernels multiply, packing 4-bit blocks
into torch's int4 layout, casting the other linear weights to bfloat16 and dequantizing the
rest (norms, biases; the token embedding stays in its blocks, `QuantizedEmbedding`) to fp32
takes tens of seconds for a 1.5B model; the result goes into
``<folder>/packed/weights-<form>-torch-<version>.safetensors`` (torch's int4 layout may
change between versions, hence the name) and later loads memory-map it: the file holds every
tensor a load of that form needs, so no other copy of the weights is kept. It is written under
a temporary name and renamed, so a half-written one is never read; failing to write it only
costs speed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spinserve.ops.blocks import BLOCK_TYPES, BlockWeight
from spinserve.ops.quant import Int4Weight, Int8Weight, QuantizedWeight

PACKED_DIR = "packed"
_PACKED = ".int4_packed"
_SCALES = ".int4_scales_zeros"
_INT8 = ".int8_weight"
_INT8_SCALES = ".int8_scales"
_BLOCKS = {f".{kind.name.lower()}_blocks": qtype for qtype, kind in BLOCK_TYPES.items()}
_ALIGNMENT = 64
# What a saved file holds, bumped when that changes so that older files are packed again:
# 2 = a tied lm_head in blocks is saved as its own entry (see `gguf_file.block_names`);
# 3 = Q4_K and Q6_K blocks with 8 rows interleaved (`spinserve.ops.interleave`);
# 4 = Q5_0 and Q8_0 blocks too;
# 5 = every tensor, not only the linear weights (named ``weights-*``, no longer ``linears-*``);
# 6 = the token embedding in its GGUF blocks, shared with a tied lm_head kept in blocks.
PACKING_VERSION = 6
_VERSION_KEY = "spinserve_packing"
# Names whose weight is another's (a tied lm_head and the embedding): saved once, as
# ``alias=name`` pairs joined by commas.
_SHARED_KEY = "spinserve_shared"
log = logging.getLogger(__name__)

Weights = dict[str, "torch.Tensor | QuantizedWeight"]


def packed_path(folder: Path, form: str = "int4") -> Path:
    """Where the weights of ``form`` are saved: ``gguf`` (GGUF blocks as they are for our
    kernels, the other linear weights bfloat16), ``gguf-int8`` (those per-row int8), ``int4``
    and ``int8`` (4-bit blocks for torch's int4 kernel, the other linear weights bfloat16 /
    int8), ``bfloat16`` (every linear weight bfloat16); in each the embedding is in its GGUF
    blocks where it is quantized, the rest fp32."""
    kind = "" if form == "int4" else f"{form}-"
    version = torch.__version__.split("+")[0]
    return folder / PACKED_DIR / f"weights-{kind}torch-{version}.safetensors"


def is_current(path: Path) -> bool:
    """Whether the saved file at ``path`` was written in this `PACKING_VERSION`."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception:  # unreadable: `read_packed` would fail too, so pack again
        return False
    return metadata.get(_VERSION_KEY) == str(PACKING_VERSION)


def read_packed(path: Path) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """The saved weights: quantized ones as `Int4Weight`, `Int8Weight` or `BlockWeight`, the
    rest as the tensors they were saved as; a weight saved once for two names under both."""
    with safe_open(path, framework="pt") as f:
        shared = _parse_shared((f.metadata() or {}).get(_SHARED_KEY, ""))
        kept: dict[str, torch.Tensor | QuantizedWeight] = {}
        for name, weight in _read_entries(f):
            if name in shared.values():
                kept[name] = weight
            yield name, weight
        for alias, name in shared.items():
            if name not in kept:
                raise ValueError(f"{alias!r} shares the weight of {name!r}, which is not saved")
            yield alias, kept[name]


def _parse_shared(text: str) -> dict[str, str]:
    """``"a=b,c=d"`` -> {a: b, c: d} (`_SHARED_KEY`)."""
    pairs = [pair.partition("=") for pair in text.split(",") if pair]
    return {alias: name for alias, _, name in pairs}


def _read_entries(f) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """Each weight the file holds, once."""
    keys = list(f.keys())
    for key in keys:
        if key.endswith((_SCALES, _INT8_SCALES)):
            continue
        if key.endswith(_PACKED):
            name = key.removesuffix(_PACKED)
            packed = _aligned(f.get_tensor(key))
            shape = (packed.shape[0], 2 * packed.shape[1])
            yield name, Int4Weight(packed, _aligned(f.get_tensor(name + _SCALES)), shape)
        elif key.endswith(tuple(_BLOCKS)):
            name, _, suffix = key.rpartition(".")
            blocks = f.get_tensor(key)
            rows = BLOCK_TYPES[_BLOCKS["." + suffix]].rows
            shape = (blocks.shape[0] * rows, _in_features(f, key))
            yield name, BlockWeight(blocks, _BLOCKS["." + suffix], shape)
        elif key.endswith(_INT8):
            name = key.removesuffix(_INT8)
            weight = _aligned(f.get_tensor(key))
            yield name, Int8Weight(weight, _aligned(f.get_tensor(name + _INT8_SCALES)))
        else:
            yield key, f.get_tensor(key)


def _in_features(f, key: str) -> int:
    """A block weight's input width, from its row of blocks."""
    row_bytes = f.get_slice(key).get_shape()[1]
    kind = BLOCK_TYPES[_BLOCKS["." + key.rpartition(".")[2]]]
    return row_bytes // (kind.bytes * kind.rows) * kind.weights


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, copied when its data does not start on a 64-byte boundary.

    A tensor read from a safetensors file lies wherever the file put it; torch's int8 kernel
    (``_weight_int8pack_mm``) crashed the process with a general protection fault on such
    data (vector loads that need alignment). torch's allocator aligns to 64 bytes.
    """
    return tensor if tensor.data_ptr() % _ALIGNMENT == 0 else tensor.clone()


def write_packed(path: Path, weights: Weights) -> None:
    """Save ``weights`` at ``path`` (temporary name, then rename); log and go on on failure.
    A weight given under two names (a tied lm_head and the embedding, in blocks) is saved
    once."""
    flat: dict[str, torch.Tensor] = {}
    first_name: dict[int, str] = {}  # id of a weight -> the name it is saved under
    shared: list[str] = []
    for name, w in weights.items():
        if id(w) in first_name:
            shared.append(f"{name}={first_name[id(w)]}")
            continue
        first_name[id(w)] = name
        if isinstance(w, Int4Weight):
            flat[name + _PACKED], flat[name + _SCALES] = w.packed, w.scales_zeros
        elif isinstance(w, Int8Weight):
            flat[name + _INT8], flat[name + _INT8_SCALES] = w.weight, w.scales
        elif isinstance(w, BlockWeight):
            flat[f"{name}.{w.type_name.lower()}_blocks"] = w.blocks
        else:
            flat[name] = w.contiguous()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(exist_ok=True)
        metadata = {"format": "pt", _VERSION_KEY: str(PACKING_VERSION)}
        save_file(flat, tmp, metadata={**metadata, _SHARED_KEY: ",".join(shared)})
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("could not save packed weights to %s (%s); next load repacks", path, exc)
        return
    _remove_legacy(path)


def _remove_legacy(path: Path) -> None:
    """Delete what a spinserve before `PACKING_VERSION` 5 saved for the same form
    (``linears-*``, linear weights only): no load reads it any more."""
    kind = path.name.removeprefix("weights-").rpartition("torch-")[0]  # "gguf-", "" for int4
    for old in path.parent.glob(f"linears-{kind}torch-*.safetensors"):
        old.unlink(missing_ok=True)

"""A zoo folder's linear weights in their run-time form, saved once beside the fp32 shards.

Packing GGUF 4-bit blocks into torch's int4 layout and casting the other linear weights to
bfloat16 takes tens of seconds for a 1.5B model; the result goes into
``<folder>/packed/linears-torch-<version>.safetensors`` (torch's int4 layout may change between
versions, hence the name) and later loads memory-map it. The file is written under a temporary
name and renamed, so a half-written one is never read; failing to write it only costs speed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from spinserve.ops.quant import Int4Weight

PACKED_DIR = "packed"
_PACKED = ".int4_packed"
_SCALES = ".int4_scales_zeros"
log = logging.getLogger(__name__)

Weights = dict[str, "torch.Tensor | Int4Weight"]


def packed_path(folder: Path) -> Path:
    return folder / PACKED_DIR / f"linears-torch-{torch.__version__.split('+')[0]}.safetensors"


def read_packed(path: Path) -> Iterator[tuple[str, torch.Tensor | Int4Weight]]:
    """The saved linear weights: `Int4Weight` for packed ones, bf16 tensors for the rest."""
    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
        for key in keys:
            if key.endswith(_SCALES):
                continue
            if key.endswith(_PACKED):
                name = key.removesuffix(_PACKED)
                packed = f.get_tensor(key)
                shape = (packed.shape[0], 2 * packed.shape[1])
                yield name, Int4Weight(packed, f.get_tensor(name + _SCALES), shape)
            else:
                yield key, f.get_tensor(key)


def write_packed(path: Path, weights: Weights) -> None:
    """Save ``weights`` at ``path`` (temporary name, then rename); log and go on on failure."""
    flat: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        if isinstance(w, Int4Weight):
            flat[name + _PACKED], flat[name + _SCALES] = w.packed, w.scales_zeros
        else:
            flat[name] = w.contiguous()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(exist_ok=True)
        save_file(flat, tmp, metadata={"format": "pt"})
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("could not save packed weights to %s (%s); next load repacks", path, exc)

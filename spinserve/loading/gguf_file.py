"""GGUF files: metadata -> Hugging Face config, quantized tensors -> Hugging Face tensors.

We convert into the Hugging Face layout rather than teach the model llama.cpp's, so one
model class serves every source. llama.cpp's converter changes two things we undo:

- llama: q/k rows are permuted for its interleaved rotary layout (``_unpermute``);
- gemma3: every RMSNorm weight is stored as ``1 + w`` (we subtract 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import Q4_K, dequantize

from spinserve.config.model import SUPPORTED_ARCHITECTURES, ModelConfig
from spinserve.loading.gguf_checks import (
    check_tensors,
    check_vocabulary,
    dimensions,
    metadata_value,
    number,
    source,
    token_id,
)
from spinserve.loading.gguf_layout import check_layout
from spinserve.loading.gguf_names import hf_tensor_name
from spinserve.models.embedding import EMBEDDING
from spinserve.ops.blocks import BLOCK_TYPES, BlockWeight
from spinserve.ops.quant import Int4Weight
from spinserve.types.errors import ModelLoadError

# Tokens that end generation, by their text: llama.cpp detects end-of-generation tokens the
# same way, since GGUF metadata names only one eos id.
END_OF_GENERATION_TEXTS = frozenset(
    {"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>"}
)
_CONTROL_TOKEN = 3  # llama.cpp token_type for control tokens

_GEMMA3_SLIDING_PATTERN = 6  # llama.cpp's default for gemma3 when the file does not say
_GEMMA3_SLIDING_THETA = 10000.0


def open_gguf(path: Path) -> GGUFReader:
    """Open a GGUF file, turning every kind of damage into a clear `ModelLoadError`: its
    layout is checked (`check_layout`) before the gguf package reads it."""
    if not path.is_file():
        raise ModelLoadError(f"no such GGUF file: {path}")
    check_layout(path)
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, struct.error, IndexError...
        raise ModelLoadError(
            f"{path} is not a readable GGUF file (corrupt or truncated?): {exc}"
        ) from exc
    arch = metadata_value(reader, "general.architecture", None)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    return reader


def hf_config(reader: GGUFReader) -> dict[str, Any]:
    """A Hugging Face config.json dict equivalent to the GGUF's metadata, every value checked
    and the tensor list checked against it (`spinserve.loading.gguf_checks`): a model built
    from it takes this file's tensors."""
    arch = metadata_value(reader, "general.architecture")
    get = lambda key, default=KeyError: metadata_value(reader, f"{arch}.{key}", default)  # noqa: E731
    num = lambda key, default: number(reader, f"{arch}.{key}", default)  # noqa: E731
    dims = dimensions(reader, arch)
    check_vocabulary(reader)
    names = {t.name for t in reader.tensors}
    hf: dict[str, Any] = {
        "model_type": "gemma3_text" if arch == "gemma3" else arch,
        "vocab_size": dims["vocab_size"],
        "hidden_size": dims["hidden_size"],
        "intermediate_size": dims["intermediate_size"],
        "num_hidden_layers": dims["num_layers"],
        "num_attention_heads": dims["num_heads"],
        "num_key_value_heads": dims["num_kv_heads"],
        "head_dim": dims["head_dim"],
        "max_position_embeddings": dims["max_position_embeddings"],
        "rms_norm_eps": num("attention.layer_norm_rms_epsilon", 1e-6),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": token_id(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": end_of_generation_ids(reader) or None,
        "rope_scaling": _rope_scaling(reader, arch),
        "rope_theta": num("rope.freq_base", 10000.0),
    }
    if arch == "qwen2":
        hf["attention_bias"] = "blk.0.attn_q.bias" in names
    if arch == "gemma3":
        hf["sliding_window"] = get("attention.sliding_window")
        hf["sliding_window_pattern"] = get(
            "attention.sliding_window_pattern", _GEMMA3_SLIDING_PATTERN
        )
        hf["rope_local_base_freq"] = num("rope.freq_base_swa", _GEMMA3_SLIDING_THETA)
        hf["query_pre_attn_scalar"] = hf["head_dim"]
        hf["final_logit_softcapping"] = get("final_logit_softcapping", None)
    try:
        config = ModelConfig.from_hf_dict(hf)
    except ValueError as exc:  # named as config.json would (the GGUF keys are checked above)
        raise ModelLoadError(f"{source(reader)}: {exc}") from None
    check_tensors(reader, arch, config)
    return hf


def _rope_scaling(reader: GGUFReader, arch: str) -> dict[str, Any] | None:
    kind = metadata_value(reader, f"{arch}.rope.scaling.type", None)
    if kind in (None, "none"):
        return None
    return {"rope_type": kind, "factor": number(reader, f"{arch}.rope.scaling.factor", 1.0)}


def end_of_generation_ids(reader: GGUFReader) -> list[int]:
    """The eos id, the eot id, and every control token whose text marks an end of turn."""
    ids = [
        token_id(reader, f"tokenizer.ggml.{key}")
        for key in ("eos_token_id", "eot_token_id", "eom_token_id")
    ]
    tokens = metadata_value(reader, "tokenizer.ggml.tokens", None) or []
    types = metadata_value(reader, "tokenizer.ggml.token_type", None) or []
    for i, text in enumerate(tokens):
        if text in END_OF_GENERATION_TEXTS and (not types or types[i] == _CONTROL_TOKEN):
            ids.append(i)
    return sorted({i for i in ids if i is not None})


def _unpermute(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary permutation of q/k rows (its ``permute`` in convert_hf_to_gguf)."""
    rows = w.shape[0]
    return (
        w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def iter_tensors(
    reader: GGUFReader,
    hf: dict[str, Any],
    int4: frozenset[str] = frozenset(),
    only: frozenset[str] | None = None,
    blocks: frozenset[str] = frozenset(),
) -> Iterator[tuple[str, torch.Tensor | Int4Weight | BlockWeight]]:
    """Every tensor (or those named in ``only``) with its Hugging Face name and layout: those
    named in ``blocks`` (`block_names`) as a `BlockWeight` of their own bytes, those named
    in ``int4`` whose GGUF type is a 4-bit block type (`int4_names`) as an `Int4Weight`, the
    rest dequantized to fp32."""
    arch = metadata_value(reader, "general.architecture")
    # a tied lm_head kept as blocks: the embedding's own (the GGUF has no output.weight)
    head_from_embedding = "lm_head.weight" in blocks and not _has_tensor(reader, "output.weight")
    for t in reader.tensors:
        name = hf_tensor_name(t.name, arch)
        head = None
        if head_from_embedding and t.name == "token_embd.weight":
            head = _block_weight(t, arch, hf)
            yield "lm_head.weight", head
        if only is not None and name not in only:
            continue
        qtype = GGMLQuantizationType(t.tensor_type)
        heads = _permuted_heads(t, arch, hf)
        if name in blocks and int(qtype) in BLOCK_TYPES:
            # An embedding is only looked up, a row at a time, which its rows as stored serve
            # best; tied to a head kept in blocks, it shares the head's: one copy.
            lookups_only = name == EMBEDDING and head is None
            yield name, head if head is not None else _block_weight(t, arch, hf, lookups_only)
            continue
        if name in int4 and qtype in INT4_TYPES:
            parts = int4_blocks(t.data, qtype, int(t.shape[-1]))
            if heads is not None:
                parts = tuple(_unpermute(p, heads) for p in parts)
            q, scale, offset = (torch.from_numpy(np.ascontiguousarray(p)) for p in parts)
            yield name, Int4Weight.from_blocks(q, scale, offset)
            continue
        try:
            data = np.asarray(dequantize(t.data, qtype), np.float32)
        except (NotImplementedError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot dequantize {t.name} ({t.tensor_type.name}): {exc}"
            ) from exc
        data = data.reshape(tuple(reversed([int(d) for d in t.shape])))
        if heads is not None:
            data = _unpermute(data, heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            data = data - 1.0
        yield name, torch.from_numpy(np.require(data, np.float32, ["C", "W"]))


def _block_weight(t, arch: str, hf: dict[str, Any], as_stored: bool = False) -> BlockWeight:
    """GGUF tensor ``t`` as a `BlockWeight` of its own bytes (rows in Hugging Face order), Q5_0,
    Q8_0, Q4_K and Q6_K with 8 rows interleaved (`BlockWeight.interleaved`: the same bytes
    rearranged) unless ``as_stored``."""
    raw = np.asarray(t.data).view(np.uint8).reshape(int(t.shape[-1]), -1)
    if (heads := _permuted_heads(t, arch, hf)) is not None:
        raw = _unpermute(raw, heads)
    own = torch.from_numpy(np.array(raw))  # a copy: the reader's map is read-only
    shape = (int(t.shape[-1]), int(t.shape[0]))
    weight = BlockWeight(own, int(t.tensor_type), shape)
    return weight if as_stored else weight.interleaved()


def _permuted_heads(t, arch: str, hf: dict[str, Any]) -> int | None:
    """The heads whose rows llama.cpp's converter permuted in tensor ``t`` (llama q and k), or
    None."""
    if arch != "llama" or not t.name.endswith(("attn_q.weight", "attn_k.weight")):
        return None
    return hf["num_attention_heads"] if "attn_q" in t.name else hf["num_key_value_heads"]


def _has_tensor(reader: GGUFReader, gguf_name: str) -> bool:
    return any(t.name == gguf_name for t in reader.tensors)


def int4_names(reader: GGUFReader, candidates: frozenset[str]) -> frozenset[str]:
    """The Hugging Face names among ``candidates`` whose GGUF tensor is in 4-bit blocks of a
    shape the int4 kernel takes (output rows a multiple of `INT4_ROW_MULTIPLE`)."""
    return _names_where(
        reader,
        candidates,
        lambda t: (
            GGMLQuantizationType(t.tensor_type) in INT4_TYPES
            and int(t.shape[-1]) % INT4_ROW_MULTIPLE == 0
        ),
    )


def block_names(reader: GGUFReader, candidates: frozenset[str]) -> frozenset[str]:
    """The Hugging Face names among ``candidates`` whose GGUF tensor is in blocks our kernels
    multiply as they are by default (`spinserve.ops.blocks.BLOCK_TYPES`)."""

    def kept(t) -> bool:
        return int(t.tensor_type) in BLOCK_TYPES and BLOCK_TYPES[int(t.tensor_type)].default

    names = _names_where(reader, candidates, kept)
    if "lm_head.weight" in candidates and not _has_tensor(reader, "output.weight"):
        # tied: the lm_head multiplies by the embedding's blocks (`iter_tensors`)
        embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        if embedding is not None and kept(embedding):
            names |= {"lm_head.weight"}
    return names


def _names_where(reader: GGUFReader, candidates: frozenset[str], keep) -> frozenset[str]:
    arch = metadata_value(reader, "general.architecture")
    return frozenset(
        name
        for t in reader.tensors
        if (name := hf_tensor_name(t.name, arch)) in candidates and keep(t)
    )


# The GGUF types whose blocks map one to one onto `spinserve.ops.quant.Int4Weight` groups.
INT4_TYPES = frozenset(
    {GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q4_K}
)
_INT4_GROUP = 32
INT4_ROW_MULTIPLE = 16  # torch's int4 packing needs the output rows in multiples of 16


def int4_blocks(
    data: np.ndarray, qtype: GGMLQuantizationType, rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 4-bit tensor's raw blocks as (q [rows, cols] uint8 in 0..15, scale, offset
    [rows, cols / 32] fp32), with ``w = scale * q + offset`` per group of 32 columns.

    The values are those `gguf.quants.dequantize` computes from the same blocks.
    """
    blocks = data.reshape(-1, data.shape[-1]).view(np.uint8).reshape(rows, -1)
    if qtype == GGMLQuantizationType.Q4_K:
        q, scale, offset = _q4_k(blocks.reshape(-1, 144))
    elif qtype in (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1):
        q, scale, offset = _q4_0_1(
            blocks.reshape(-1, 18 if qtype == GGMLQuantizationType.Q4_0 else 20), qtype
        )
    else:
        raise ValueError(f"{qtype.name} is not a 4-bit block type")
    return q.reshape(rows, -1), scale.reshape(rows, -1), offset.reshape(rows, -1)


def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _q4_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # 256 weights: f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) per 32, 128 bytes of nibbles;
    # sub-block 2i holds the low nibbles of bytes 32i..32i+31, sub-block 2i+1 the high ones.
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, mins = Q4_K.get_scale_min(blocks[:, 4:16])
    nibbles = blocks[:, 16:144].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(
        1, 1, 2, 1
    )
    q = (nibbles & np.uint8(0x0F)).reshape(n, 8 * 32)
    return q, d * sc.astype(np.float32), -(dmin * mins.astype(np.float32))


def _q4_0_1(
    blocks: np.ndarray, qtype: GGMLQuantizationType
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # 32 weights: f16 d (Q4_1: then f16 m), 16 bytes: low nibbles are weights 0..15, high 16..31.
    n = blocks.shape[0]
    d = _f16(blocks[:, 0:2])
    if qtype == GGMLQuantizationType.Q4_0:
        offset, qs = -8.0 * d, blocks[:, 2:18]
    else:
        offset, qs = _f16(blocks[:, 2:4]), blocks[:, 4:20]
    q = (qs.reshape(n, 1, 16) >> np.array([0, 4], np.uint8).reshape(1, 2, 1)) & np.uint8(0x0F)
    return q.reshape(n, _INT4_GROUP), d, offset

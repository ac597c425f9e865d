"""GGUF-quantized weights kept in their own blocks, multiplied by our kernels.

`BlockWeight` holds a linear weight's GGUF blocks byte for byte (each output row is
``in / block size`` blocks); `block_linear` multiplies by it with our C++ kernels:
``csrc/k_quant_matmul.cpp`` for the 256-weight k-quant super-blocks (Q4_K, Q6_K) and
``csrc/small_matmul.cpp`` for the 32-weight blocks (Q8_0, Q5_0, Q4_0, Q4_1). Both read and
unpack each block once for all the rows of a call, so verifying k draft tokens costs far less
than k decodes (docs/benchmarks.md). Activations are rounded to int8 per row and per block of
columns, as llama.cpp does for the same blocks; every output value depends only on its own row
(batch-invariant, docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spinserve.ops import interleave, native
from spinserve.ops.formats import FORMATS, BlockFormat


@dataclass(frozen=True)
class BlockType:
    name: str
    weights: int  # per block
    bytes: int  # per block
    op: str  # our kernel's op that multiplies it
    rows: int = 1  # weight rows per row of the blocks tensor (8: interleaved, `interleave`)
    # Whether `--weights auto` uses our kernel for it (else torch's int4 kernel). Every type
    # here does since Q4_0/Q4_1 got the interleaved layout (SmolLM2-135M's Q4_1 decode and 9
    # tokens ran faster on it than on torch's int4 kernel, call for call; before, with the
    # row layout, they ran faster on torch's, docs/benchmarks.md).
    default: bool = True


def _op(fmt: BlockFormat) -> str:
    """The k-quant super-blocks (256 weights) have one kernel, the 32-weight blocks another."""
    return "block_matmul" if fmt.weights == 256 else "small_block_matmul"


# ggml type number (or ours, interleaved: `interleave`) -> its block layout and our kernel
BLOCK_TYPES = {
    f.id: BlockType(f.name, f.weights, f.bytes, _op(f), rows=f.rows) for f in FORMATS.values()
}


def kernels_available() -> bool:
    """Whether our block kernels build and load here (else torch's kernels run instead)."""
    return native.available()


def set_wide_passes(on: bool | None) -> bool:
    """Whether the interleaved kernels run two chunks side by side in 512-bit registers from 4
    rows on (``ops/csrc/wide.h``): True or False, or None to measure this CPU again (what
    happens at start: wide where its 512-bit dpbusd does at least 1.5x the multiply-adds of
    its 256-bit one, as on Zen 5 and not on Zen 4). The same bits either way; for tests and
    side-by-side timing. Returns whether they were on (always False for a build without
    AVX-512)."""
    mode = -1 if on is None else int(on)
    return bool(getattr(torch.ops, native.load()).wide_passes(mode))


@dataclass(frozen=True)
class BlockWeight:
    """An ``[out, in]`` weight as GGUF blocks: ``blocks`` is [out, in / weights * bytes] uint8
    of ggml type ``qtype`` (one of `BLOCK_TYPES`); for an interleaved type (``rows`` = 8),
    [out / 8, 8 * in / weights * bytes]."""

    blocks: torch.Tensor
    qtype: int
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        if self.qtype not in BLOCK_TYPES:
            raise ValueError(f"unsupported block type {self.qtype}")
        out_features, in_features = self.shape
        kind = BLOCK_TYPES[self.qtype]
        expected = (out_features // kind.rows, in_features // kind.weights * kind.bytes * kind.rows)
        if (
            in_features % kind.weights
            or out_features % kind.rows
            or tuple(self.blocks.shape) != expected
        ):
            raise ValueError(
                f"{kind.name} weight {self.shape} needs in % {kind.weights} == 0, "
                f"out % {kind.rows} == 0 and blocks of shape {expected}, "
                f"got {tuple(self.blocks.shape)}"
            )

    @property
    def type_name(self) -> str:
        return BLOCK_TYPES[self.qtype].name

    @property
    def nbytes(self) -> int:
        return self.blocks.nbytes

    def interleaved(self) -> BlockWeight:
        """This weight in the interleaved layout our kernel reads fastest (`interleave`), or
        itself when its type or row count has none."""
        if not interleave.can_interleave(self.qtype, self.shape[0]):
            return self
        chunks = interleave.interleave(self.blocks.numpy(), self.qtype)
        return BlockWeight(torch.from_numpy(chunks), interleave.INTERLEAVED[self.qtype], self.shape)

    def gguf_blocks(self) -> tuple[np.ndarray, int]:
        """The GGUF's own blocks [out, in / weights * bytes] and their ggml type."""
        raw = self.blocks.numpy()
        if self.qtype in interleave.BASE:
            return interleave.deinterleave(raw, self.qtype), interleave.BASE[self.qtype]
        return raw, self.qtype

    def dequantize(self) -> torch.Tensor:
        """[out, in] fp32: the block values exactly (as gguf's reference dequantizer)."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        raw, qtype = self.gguf_blocks()
        values = dequantize(raw.reshape(-1), GGMLQuantizationType(qtype))
        return torch.from_numpy(np.asarray(values, np.float32).reshape(self.shape))


def block_linear(x: torch.Tensor, weight: BlockWeight) -> torch.Tensor:
    """``x @ W.T`` for x of shape [..., in], in x's dtype."""
    out_features, in_features = weight.shape
    rows = x.reshape(-1, in_features).float()
    op = getattr(getattr(torch.ops, native.load()), BLOCK_TYPES[weight.qtype].op)
    y = op(rows, weight.blocks, weight.qtype, out_features, False)
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)

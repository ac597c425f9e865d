"""GGUF k-quant weights (Q4_K, Q6_K) kept in their own blocks, multiplied by our kernel.

`BlockWeight` holds a linear weight's GGUF super-blocks byte for byte (each output row is
``in / 256`` blocks); `block_linear` multiplies by it with ``csrc/block_matmul.cpp``, which
reads and unpacks each block once for all the rows of a call, so verifying k draft tokens
costs far less than k decodes (measured in docs/benchmarks.md). Activations are rounded to
int8 per row and per 256 columns, as llama.cpp does for the same blocks; every output value
depends only on its own row (batch-invariant, docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spinserve.ops import native

SUPER_BLOCK = 256
# ggml type number -> (name, bytes per super-block of 256 weights)
KQUANT_TYPES = {12: ("Q4_K", 144), 14: ("Q6_K", 210)}


@dataclass(frozen=True)
class BlockWeight:
    """An ``[out, in]`` weight as GGUF k-quant super-blocks: ``blocks`` is [out, in/256*bytes]
    uint8, ``qtype`` the ggml type number (12 = Q4_K, 14 = Q6_K)."""

    blocks: torch.Tensor
    qtype: int
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        if self.qtype not in KQUANT_TYPES:
            raise ValueError(f"unsupported k-quant type {self.qtype}")
        out_features, in_features = self.shape
        block_bytes = KQUANT_TYPES[self.qtype][1]
        expected = (out_features, in_features // SUPER_BLOCK * block_bytes)
        if in_features % SUPER_BLOCK or tuple(self.blocks.shape) != expected:
            raise ValueError(
                f"{self.type_name} weight {self.shape} needs in % 256 == 0 and blocks of shape "
                f"{expected}, got {tuple(self.blocks.shape)}"
            )

    @property
    def type_name(self) -> str:
        return KQUANT_TYPES[self.qtype][0]

    @property
    def nbytes(self) -> int:
        return self.blocks.nbytes

    def dequantize(self) -> torch.Tensor:
        """[out, in] fp32: the block values exactly (as gguf's reference dequantizer)."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        raw = self.blocks.numpy().reshape(-1)
        values = dequantize(raw, GGMLQuantizationType(self.qtype))
        return torch.from_numpy(np.asarray(values, np.float32).reshape(self.shape))


def block_linear(x: torch.Tensor, weight: BlockWeight) -> torch.Tensor:
    """``x @ W.T`` for x of shape [..., in], in x's dtype."""
    out_features, in_features = weight.shape
    rows = x.reshape(-1, in_features).float()
    ops = getattr(torch.ops, native.load("block_matmul"))
    y = ops.block_matmul(rows, weight.blocks, weight.qtype, out_features, False)
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)

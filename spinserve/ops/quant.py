"""Weight-only quantized matmuls on torch's CPU kernels.

`Int4Weight`: GGUF's 4-bit blocks kept as they are, run by torch's int4 kernel.

A 4-bit GGUF block of 32 weights (Q4_0, Q4_1, and each 32-weight sub-block of Q4_K) stores
``w = scale * q + offset`` with ``q`` in 0..15. torch's CPU kernel
(``aten._weight_int4pack_mm_for_cpu``) computes with ``w = (q - 8) * scale + zero`` per group of
32 along the input dimension, so the blocks map onto it one to one with
``zero = offset + 8 * scale``: no re-quantization. What changes is the precision around the
weights: the kernel takes bfloat16 activations, scales and zeros and returns bfloat16 (llama.cpp
likewise rounds activations, to 8 bits per block, before its 4-bit dot products).

`Int8Weight`: any weight re-quantized to int8 with one scale per output row, run by
``aten._weight_int8pack_mm``. Not exact (an error up to half a step of max|row| / 127): only
for drafters, whose numerics move their acceptance, never the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spinserve.ops.blocks import BlockWeight

GROUP_SIZE = 32  # a GGUF 4-bit block (Q4_K's sub-block); one of the kernel's group sizes
_KERNEL_DTYPE = torch.bfloat16


@dataclass(frozen=True)
class Int4Weight:
    """An ``[out, in]`` weight in torch's CPU int4 layout, with per-group scales and zeros."""

    packed: torch.Tensor  # [out, in / 2] uint8
    scales_zeros: torch.Tensor  # [in / GROUP_SIZE, out, 2] bfloat16
    shape: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales_zeros.nbytes

    @classmethod
    def from_blocks(cls, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> Int4Weight:
        """Pack ``w[i, j] = scale[i, j // 32] * q[i, j] + offset[i, j // 32]``.

        ``q``: [out, in] integers in 0..15; ``scale``, ``offset``: [out, in / 32] floats.
        """
        out_features, in_features = q.shape
        groups = in_features // GROUP_SIZE
        if in_features % GROUP_SIZE or scale.shape != (out_features, groups):
            raise ValueError(
                f"int4 weight {tuple(q.shape)} needs in % {GROUP_SIZE} == 0 and scales of shape "
                f"{(out_features, groups)}, got {tuple(scale.shape)}"
            )
        if offset.shape != scale.shape:
            raise ValueError(f"offsets {tuple(offset.shape)} differ from scales {scale.shape}")
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        scale = scale.float()
        zero = offset.float() + 8.0 * scale
        scales_zeros = torch.stack([scale.t(), zero.t()], dim=-1).to(_KERNEL_DTYPE).contiguous()
        return cls(packed, scales_zeros, (out_features, in_features))

    def dequantize(self) -> torch.Tensor:
        """[out, in] fp32: the weights as the kernel sees them (read back through it, so
        rounded to bfloat16 like its output)."""
        in_features = self.shape[1]
        eye = torch.eye(in_features, dtype=_KERNEL_DTYPE)
        cols = torch.ops.aten._weight_int4pack_mm_for_cpu(
            eye, self.packed, GROUP_SIZE, self.scales_zeros
        )  # [in, out]: row j is W[:, j]
        return cols.float().t().contiguous()


def int4_linear(x: torch.Tensor, weight: Int4Weight) -> torch.Tensor:
    """``x @ W.T`` for x of shape [..., in], in x's dtype."""
    in_features = weight.shape[1]
    rows = x.reshape(-1, in_features).to(_KERNEL_DTYPE)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(
        rows, weight.packed, GROUP_SIZE, weight.scales_zeros
    )
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


@dataclass(frozen=True)
class Int8Weight:
    """An ``[out, in]`` weight as int8 with a bf16 scale per output row."""

    weight: torch.Tensor  # [out, in] int8
    scales: torch.Tensor  # [out] bfloat16

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes + self.scales.nbytes

    @classmethod
    def quantize(cls, w: torch.Tensor) -> Int8Weight:
        """Symmetric per-row quantization: ``w ~ scale[i] * q[i, j]``, q in -127..127."""
        w = w.float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).to(_KERNEL_DTYPE)
        q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(q.contiguous(), scale)

    def dequantize(self) -> torch.Tensor:
        return self.weight.float() * self.scales.float()[:, None]


def int8_linear(x: torch.Tensor, weight: Int8Weight) -> torch.Tensor:
    """``x @ W.T`` for x of shape [..., in], in x's dtype."""
    out_features, in_features = weight.shape
    rows = x.reshape(-1, in_features).to(_KERNEL_DTYPE)
    y = torch.ops.aten._weight_int8pack_mm(rows, weight.weight, weight.scales)
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


QuantizedWeight = Int4Weight | Int8Weight | BlockWeight


def rowwise_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` for a bf16/fp16 ``weight``, each row computed as if it were alone.

    torch's default CPU kernel for these dtypes (oneDNN) picks its blocking by row count, so a
    row's result changes in the last bits with the rows beside it (measured: 15-44 of 45 rows
    differ over 1-9-row calls for the Qwen shapes). torch's own kernel, used with oneDNN turned
    off for the call, is a matrix-vector product per row: the same bits in a decode and a
    verification (it costs linear time in rows, like the int kernels; faster for one row).
    """
    enabled = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        return F.linear(x, weight)
    finally:
        torch._C._set_mkldnn_enabled(enabled)

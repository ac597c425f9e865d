"""The int4 weight form: GGUF-style 4-bit blocks packed for torch's CPU kernel."""

from __future__ import annotations

import pytest
import torch

from spinserve.ops.quant import (
    GROUP_SIZE,
    Int4Weight,
    Int8Weight,
    int4_linear,
    int8_linear,
    rowwise_linear,
)


def _blocks(out_features: int, in_features: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (out_features, in_features), generator=g, dtype=torch.uint8)
    groups = in_features // GROUP_SIZE
    scale = torch.rand(out_features, groups, generator=g) * 0.02 + 0.001
    offset = -8 * scale + torch.randn(out_features, groups, generator=g) * 0.01
    dense = scale.repeat_interleave(GROUP_SIZE, 1) * q.float() + offset.repeat_interleave(
        GROUP_SIZE, 1
    )
    return q, scale, offset, dense


@pytest.mark.parametrize("rows", [1, 3, 8, 33])
def test_int4_linear_computes_scale_times_q_plus_offset(rows):
    q, scale, offset, dense = _blocks(96, 128)
    weight = Int4Weight.from_blocks(q, scale, offset)
    x = torch.randn(rows, 128)
    got = int4_linear(x, weight)
    expected = x @ dense.t()
    assert got.dtype == torch.float32 and got.shape == (rows, 96)
    # bf16 activations, scales, zeros and output: ~3 significant digits.
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-2 * expected.abs().max().item())


def test_int4_linear_keeps_leading_dimensions_and_dtype():
    q, scale, offset, _ = _blocks(64, 64)
    weight = Int4Weight.from_blocks(q, scale, offset)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    assert int4_linear(x, weight).shape == (2, 5, 64)
    assert int4_linear(x, weight).dtype == torch.bfloat16


def test_dequantize_reads_back_the_blocks():
    q, scale, offset, dense = _blocks(64, 96, seed=3)
    weight = Int4Weight.from_blocks(q, scale, offset)
    torch.testing.assert_close(weight.dequantize(), dense, rtol=1e-2, atol=1e-3)
    assert weight.nbytes == 64 * 96 // 2 + (96 // GROUP_SIZE) * 64 * 2 * 2


def test_bad_block_shapes_are_clear_errors():
    q, scale, offset, _ = _blocks(64, 64)
    with pytest.raises(ValueError, match="in % 32"):
        Int4Weight.from_blocks(q[:, :48], scale, offset)
    with pytest.raises(ValueError, match="offsets"):
        Int4Weight.from_blocks(q, scale, offset[:, :1])


def test_int8_rows_are_quantized_per_row_and_multiplied_by_the_int8_kernel():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(48, 64, generator=gen) * torch.linspace(0.1, 3.0, 48)[:, None]
    q = Int8Weight.quantize(w)
    assert q.weight.dtype == torch.int8 and q.weight.abs().max() == 127
    step = w.abs().amax(1, keepdim=True) / 127
    assert ((q.dequantize() - w).abs() <= step * 0.51).all()  # half a step, bf16 scales aside
    x = torch.randn(5, 64, generator=gen)
    expected = x @ q.dequantize().t()
    got = int8_linear(x, q)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-2 * expected.abs().max().item())


@pytest.mark.parametrize(("out_features", "in_features"), [(256, 192), (96, 640)])
def test_every_linear_form_gives_a_row_the_same_bits_in_any_batch(out_features, in_features):
    """Batch invariance, the basis of lossless greedy speculation: a row's product is the
    same bits whether it is alone (a decode) or among others (a verification)."""
    gen = torch.Generator().manual_seed(4)
    q, scale, offset, dense = _blocks(out_features, in_features, seed=4)
    int4 = Int4Weight.from_blocks(q, scale, offset)
    bf16 = dense.bfloat16()
    x = torch.randn(9, in_features, generator=gen)
    for fn in (lambda r: int4_linear(r, int4), lambda r: rowwise_linear(r.bfloat16(), bf16)):
        for rows in range(2, 10):
            together = fn(x[:rows])
            for r in range(rows):
                assert torch.equal(together[r], fn(x[r : r + 1])[0]), (rows, r)
    assert torch._C._get_mkldnn_enabled()  # rowwise_linear put oneDNN back

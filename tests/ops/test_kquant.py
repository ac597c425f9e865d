"""Our k-quant kernel (Q4_K, Q6_K blocks x int8-rounded activations): exact against a float64
reference of the same arithmetic, and batch-invariant by construction: every output value is
the same bits whatever rows share the call, however many threads split it, and whichever
code path (AVX2/AVX-512 or portable C++) computed it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from tiny_models import quantize_k

from spinserve.ops import native
from spinserve.ops.kquant import BlockWeight, block_linear

Q4_K, Q6_K = GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K


def _weight(quant: GGMLQuantizationType, out_features: int, in_features: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out_features, in_features)).astype(np.float32) * 0.1
    w[0, :256] = 0.0  # an all-zero super-block
    w[1] = np.abs(w[1])  # no negative values: Q4_K's min is 0
    blocks = torch.from_numpy(quantize_k(w, quant))
    return BlockWeight(blocks, int(quant), (out_features, in_features))


def _reference(x: torch.Tensor, weight: BlockWeight) -> torch.Tensor:
    """float64 sum over super-blocks of scale_x * (W . round(x / scale_x)), the kernel's
    definition: activations rounded to int8 per row and per 256 columns."""
    x = x.double().reshape(x.shape[0], -1, 256)
    amax = x.abs().amax(-1, keepdim=True)
    scale = (amax.float() / 127.0).double()
    inv = torch.where(amax > 0, (127.0 / amax.float()).double(), torch.zeros_like(amax))
    q = torch.round((x.float() * inv.float()).double()).clamp(-127, 127)
    w = weight.dequantize().double().reshape(weight.shape[0], -1, 256)
    return torch.einsum("rbk,nbk,rb->rn", q, w, scale.squeeze(-1)).float()


@pytest.fixture(scope="module", autouse=True)
def kernels() -> None:
    assert native.available(), "the k-quant kernel must build here (g++ and torch headers)"


@pytest.mark.parametrize("quant", [Q4_K, Q6_K])
@pytest.mark.parametrize("rows", [1, 3, 8, 13])
def test_matches_the_float64_reference(quant, rows):
    weight = _weight(quant, 40, 768)
    x = torch.randn(rows, 768) * 3
    x[0, 256:512] = 0.0  # an all-zero activation block
    got = block_linear(x, weight)
    expected = _reference(x, weight)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("quant", [Q4_K, Q6_K])
def test_error_against_the_dequantized_weights_is_the_activations_rounding(quant):
    weight = _weight(quant, 64, 512)
    x = torch.randn(4, 512)
    exact = x.double() @ weight.dequantize().double().T
    error = (block_linear(x, weight).double() - exact).norm() / exact.norm()
    assert error < 1.5e-2  # int8 steps of max|x| / 127 per 256 columns


@pytest.mark.parametrize("quant", [Q4_K, Q6_K])
def test_each_row_is_the_same_bits_whatever_shares_its_call(quant):
    weight = _weight(quant, 72, 512, seed=1)
    x = torch.randn(21, 512)
    together = block_linear(x, weight)
    for start, stop in [(0, 1), (3, 4), (0, 5), (2, 11), (4, 21)]:
        assert torch.equal(block_linear(x[start:stop], weight), together[start:stop])


def test_same_bits_with_one_thread_or_two():
    weight = _weight(Q4_K, 96, 512, seed=2)
    x = torch.randn(9, 512)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = block_linear(x, weight)
        torch.set_num_threads(2)
        two = block_linear(x, weight)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.parametrize("quant", [Q4_K, Q6_K])
def test_portable_build_gives_the_same_bits(quant):
    """The same source built without AVX2 (plain C++, as on a CPU without it) against this
    machine's vector build: the arithmetic is defined lane by lane, so not one bit differs."""
    portable = getattr(torch.ops, native.load("block_matmul", portable=True))
    weight = _weight(quant, 48, 768, seed=3)
    x = torch.randn(11, 768) * 5
    vector = block_linear(x, weight)
    plain = portable.block_matmul(x, weight.blocks, weight.qtype, 48, False)
    assert torch.equal(vector, plain)


def test_keeps_the_input_dtype_and_leading_dims():
    weight = _weight(Q6_K, 16, 256)
    x = torch.randn(2, 3, 256, dtype=torch.bfloat16)
    y = block_linear(x, weight)
    assert y.shape == (2, 3, 16) and y.dtype == torch.bfloat16
    assert block_linear(torch.zeros(0, 256), weight).shape == (0, 16)


def test_misshapen_blocks_are_a_clear_error():
    blocks = torch.zeros(4, 144, dtype=torch.uint8)
    with pytest.raises(ValueError, match="in % 256"):
        BlockWeight(blocks, int(Q4_K), (4, 200))
    with pytest.raises(ValueError, match="blocks of shape"):
        BlockWeight(blocks, int(Q4_K), (4, 512))
    with pytest.raises(ValueError, match="unsupported"):
        BlockWeight(blocks, int(GGMLQuantizationType.Q5_K), (4, 256))


def test_build_failure_is_a_clear_kernel_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("SPINSERVE_CACHE", str(tmp_path))
    source = tmp_path / "broken.cpp"
    source.write_text("this is not C++\n")
    with pytest.raises(native.KernelUnavailable, match=r"compiling broken\.cpp failed"):
        native._build(source, ["-shared"])
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(native.KernelUnavailable, match="no C\\+\\+ compiler"):
        native._build(source, ["-shared"])

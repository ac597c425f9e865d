"""Our block kernels (GGUF blocks x int8-rounded activations: Q4_K, Q6_K super-blocks and the
32-weight Q8_0, Q5_0, Q4_0, Q4_1): exact against a float64 reference of the same arithmetic,
and batch-invariant by construction: every output value is the same bits whatever rows share
the call, however many threads split it, and whichever code path (AVX-512, AVX2 or portable
C++) computed it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import quantize
from tiny_models import quantize_k

from spinserve.ops import interleave, native
from spinserve.ops.blocks import (
    BLOCK_TYPES,
    BlockWeight,
    block_linear,
    kernels_available,
    set_wide_passes,
)
from spinserve.ops.formats import FORMATS

Q4_K, Q6_K = GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q6_K
SMALL = [
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q5_0,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
]
# ours: the same types with 8 weight rows interleaved (spinserve.ops.interleave)
Q4_K_X8, Q6_K_X8 = interleave.Q4_K_X8, interleave.Q6_K_X8
SMALL_X8 = [interleave.INTERLEAVED[int(q)] for q in SMALL]
ALL = [Q4_K, Q6_K, Q4_K_X8, Q6_K_X8, *SMALL, *SMALL_X8]
INTERLEAVABLE = [Q4_K, Q6_K, *SMALL]  # the GGUF types with an interleaved form


def _name(quant) -> str:
    return BLOCK_TYPES[int(quant)].name


def _weight(quant, out_features: int, in_features: int, seed: int = 0):
    """Random weights in blocks of ``quant`` (an interleaved type: its base type's blocks,
    interleaved)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out_features, in_features)).astype(np.float32) * 0.1
    w[0, :256] = 0.0  # an all-zero super-block
    w[1] = np.abs(w[1])  # no negative values: Q4_K's min is 0
    base = GGMLQuantizationType(interleave.BASE.get(int(quant), int(quant)))
    raw = quantize_k(w, base) if base in (Q4_K, Q6_K) else quantize(w, base)
    blocks = torch.from_numpy(np.ascontiguousarray(raw).reshape(out_features, -1))
    weight = BlockWeight(blocks, int(base), (out_features, in_features))
    return weight.interleaved() if int(quant) in interleave.BASE else weight


def _reference(x: torch.Tensor, weight: BlockWeight) -> torch.Tensor:
    """float64 sum over blocks of scale_x * (W . round(x / scale_x)), the kernels' definition:
    activations rounded to int8 per row and per block of columns (256 or 32)."""
    size = BLOCK_TYPES[weight.qtype].weights
    # numpy float32, operation for operation as the kernel (torch's `127.0 / t` would be
    # 127 * (1 / t), another rounding)
    x32 = x.float().numpy().reshape(x.shape[0], -1, size)
    amax = np.abs(x32).max(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.clip(np.rint(x32 * inv), -127, 127)
    scale = (amax / np.float32(127.0)).astype(np.float64)[..., 0]
    w = weight.dequantize().double().reshape(weight.shape[0], -1, size)
    product = torch.einsum(
        "rbk,nbk,rb->rn", torch.from_numpy(q).double(), w, torch.from_numpy(scale)
    )
    return product.float()


@pytest.fixture(scope="module", autouse=True)
def kernels() -> None:
    assert kernels_available(), "our kernels must build here (g++ and torch headers)"


@pytest.mark.parametrize("quant", ALL, ids=_name)
@pytest.mark.parametrize("rows", [1, 3, 8, 13, 40])
def test_matches_the_float64_reference(quant, rows):
    torch.manual_seed(rows)
    weight = _weight(quant, 40, 768)
    x = torch.randn(rows, 768) * 3
    x[0, 256:512] = 0.0  # an all-zero activation block
    got = block_linear(x, weight)
    expected = _reference(x, weight)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("quant", ALL, ids=_name)
def test_error_against_the_dequantized_weights_is_the_activations_rounding(quant):
    weight = _weight(quant, 64, 512)
    x = torch.randn(4, 512)
    exact = x.double() @ weight.dequantize().double().T
    error = (block_linear(x, weight).double() - exact).norm() / exact.norm()
    assert error < 1.5e-2  # int8 steps of max|x| / 127 per 256 columns


@pytest.mark.parametrize("quant", ALL, ids=_name)
def test_each_row_is_the_same_bits_whatever_shares_its_call(quant):
    weight = _weight(quant, 72, 512, seed=1)
    x = torch.randn(21, 512)
    together = block_linear(x, weight)
    for start, stop in [(0, 1), (3, 4), (0, 5), (2, 11), (4, 21)]:
        assert torch.equal(block_linear(x[start:stop], weight), together[start:stop])


@pytest.mark.parametrize(
    "quant", [Q4_K, Q4_K_X8, GGMLQuantizationType.Q5_0, interleave.Q5_0_X8], ids=_name
)
def test_same_bits_with_one_thread_or_two(quant):
    weight = _weight(quant, 96, 512, seed=2)
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


def _build_op(quant, variant: str):
    """The op for `quant` from the build `variant` (spinserve.ops.native.VARIANTS)."""
    build = getattr(torch.ops, native.load(variant))
    return getattr(build, BLOCK_TYPES[int(quant)].op)


BUILDS = ["avx2", "portable"]


@pytest.mark.parametrize("variant", BUILDS)
@pytest.mark.parametrize("quant", ALL, ids=_name)
def test_every_build_gives_the_same_bits(quant, variant):
    """The same source built without AVX-512 (the AVX2 + FMA paths, as on most x86 CPUs) and
    without AVX2 (plain C++) against this machine's build: the arithmetic is defined lane by
    lane, so not one bit differs. 11 rows: passes of 8 + 3 (AVX-512), 4 + 4 + 3 (AVX2)."""
    op = _build_op(quant, variant)
    weight = _weight(quant, 48, 768, seed=3)
    x = torch.randn(11, 768) * 5
    vector = block_linear(x, weight)
    assert torch.equal(vector, op(x, weight.blocks, weight.qtype, 48, False))
    # the plain C++ path inside this build too
    assert torch.equal(vector, op(x, weight.blocks, weight.qtype, 48, True))


@pytest.mark.parametrize("variant", BUILDS)
@pytest.mark.parametrize("quant", [Q4_K, GGMLQuantizationType.Q8_0], ids=_name)
def test_activation_ties_round_half_to_even_on_every_path(quant, variant):
    """max|x| = 127 makes the rounding step 1, so x = k + 0.5 is an exact tie: every build
    must round it to the even neighbour, as the reference does."""
    op = _build_op(quant, variant)
    weight = _weight(quant, 16, 512, seed=4)
    halves = torch.arange(-64, 64, dtype=torch.float32) + 0.5
    x = halves.repeat(2, 4)
    x[:, ::32] = 127.0
    x[1] = -x[1]
    got = block_linear(x, weight)
    torch.testing.assert_close(got, _reference(x, weight), rtol=1e-5, atol=1e-3)
    assert torch.equal(got, op(x, weight.blocks, weight.qtype, 16, False))


def _assert_one_call_is_each_call(op, weights: list[BlockWeight], rows: int) -> None:
    """`op` (a *_many kernel) on ``weights`` gives each the bits of `block_linear` alone."""
    x = torch.randn(rows, weights[0].shape[1])
    blocks = [w.blocks for w in weights]
    outs = op(x, blocks, [w.qtype for w in weights], [w.shape[0] for w in weights], False)
    for out, weight in zip(outs, weights, strict=True):
        assert torch.equal(out, block_linear(x, weight))


def test_several_weights_in_one_call_are_the_same_bits_as_one_call_each():
    """block_matmul_many (one rounding of x, one parallel loop over every output column: the
    q, k, v and gate, up projections of a layer) gives each weight's own call's bits."""
    op = getattr(torch.ops, native.load()).block_matmul_many
    weights = [
        _weight(Q4_K, 40, 512, seed=5),
        _weight(Q6_K, 8, 512, seed=6),
        _weight(Q4_K, 17, 512, seed=7),
        _weight(Q4_K_X8, 24, 512, seed=10),
        _weight(Q6_K_X8, 16, 512, seed=11),
    ]
    for rows in (1, 5):
        _assert_one_call_is_each_call(op, weights, rows)
    with pytest.raises(RuntimeError, match="expected \\[8, 420\\]"):
        op(torch.randn(1, 512), [weights[0].blocks, weights[0].blocks], [12, 14], [40, 8], False)


def test_several_32_weight_blocks_in_one_call_are_the_same_bits_as_one_call_each():
    """small_block_matmul_many (x rounded once per distinct weight offset: Q5_0's and Q8_0's
    differ; one parallel loop over every output column) gives each weight's own call's bits,
    interleaved or not, with the wide passes on (from 4 rows) and off."""
    op = getattr(torch.ops, native.load()).small_block_matmul_many
    q5_x8, q8_x8, q4_1_x8 = SMALL_X8[1], SMALL_X8[0], SMALL_X8[3]
    weights = [
        _weight(q5_x8, 64, 512, seed=5),
        _weight(q8_x8, 24, 512, seed=6),
        _weight(GGMLQuantizationType.Q4_1, 20, 512, seed=7),
        _weight(q5_x8, 16, 512, seed=8),
        _weight(q4_1_x8, 40, 512, seed=9),
    ]
    was = set_wide_passes(True)
    try:
        for wide, rows in [(True, 1), (True, 5), (False, 5), (True, 9)]:
            set_wide_passes(wide)
            _assert_one_call_is_each_call(op, weights, rows)
    finally:
        set_wide_passes(was)
    with pytest.raises(RuntimeError, match="expected \\[8, 4352\\]"):
        op(
            torch.randn(1, 512),
            [weights[0].blocks, weights[0].blocks],
            [1006, 1008],
            [64, 64],
            False,
        )


@pytest.mark.parametrize("quant", INTERLEAVABLE, ids=_name)
def test_interleaving_is_a_bijection_on_the_bytes(quant):
    """Any bytes (not only valid blocks: every bit of these blocks means something)
    come back from `deinterleave` as they went in, so the interleaved weight is the GGUF's."""
    nbytes = interleave.GGUF_BYTES[int(quant)]
    raw = np.random.default_rng(8).integers(0, 256, (24, 3 * nbytes), dtype=np.uint8)
    chunks = interleave.interleave(raw, int(quant))
    assert chunks.shape == (3, 3 * interleave.CHUNK_BYTES[interleave.INTERLEAVED[int(quant)]])
    assert np.array_equal(interleave.deinterleave(chunks, interleave.INTERLEAVED[int(quant)]), raw)
    assert not interleave.can_interleave(int(quant), 20)


@pytest.mark.parametrize("quant", INTERLEAVABLE, ids=_name)
def test_interleaved_rows_compute_the_same_products(quant):
    """The same integers per (super-)block as the row-by-row layout, summed in another float
    order: equal to float rounding, and the same dequantized weights exactly."""
    plain = _weight(quant, 48, 768, seed=9)
    mixed = plain.interleaved()
    assert mixed.type_name == f"{quant.name}x8" and mixed.shape == plain.shape
    assert torch.equal(mixed.dequantize(), plain.dequantize())
    x = torch.randn(11, 768) * 3
    torch.testing.assert_close(block_linear(x, mixed), block_linear(x, plain), rtol=1e-5, atol=1e-5)
    # a row count that is not a multiple of 8 stays as it is
    assert _weight(quant, 20, 256).interleaved().qtype == int(quant)


def test_keeps_the_input_dtype_and_leading_dims():
    weight = _weight(Q6_K, 16, 256)
    x = torch.randn(2, 3, 256, dtype=torch.bfloat16)
    y = block_linear(x, weight)
    assert y.shape == (2, 3, 16) and y.dtype == torch.bfloat16
    assert block_linear(torch.zeros(0, 256), weight).shape == (0, 16)


def test_misshapen_blocks_are_a_clear_error():
    with pytest.raises(ValueError, match="in % 32"):
        BlockWeight(torch.zeros(4, 34, dtype=torch.uint8), 8, (4, 40))
    blocks = torch.zeros(4, 144, dtype=torch.uint8)
    with pytest.raises(ValueError, match="in % 256"):
        BlockWeight(blocks, int(Q4_K), (4, 200))
    with pytest.raises(ValueError, match="blocks of shape"):
        BlockWeight(blocks, int(Q4_K), (4, 512))
    with pytest.raises(ValueError, match="unsupported"):
        BlockWeight(blocks, int(GGMLQuantizationType.Q5_K), (4, 256))
    with pytest.raises(ValueError, match="out % 8"):
        BlockWeight(torch.zeros(1, 8 * 148, dtype=torch.uint8), Q4_K_X8, (12, 256))
    op = getattr(torch.ops, native.load()).block_matmul
    with pytest.raises(RuntimeError, match="multiple of 8"):
        op(torch.randn(1, 256), torch.zeros(1, 8 * 148, dtype=torch.uint8), Q4_K_X8, 12, False)


def test_build_failure_is_a_clear_kernel_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("SPINSERVE_CACHE", str(tmp_path))
    source = tmp_path / "csrc"
    source.mkdir()
    (source / "fine.cpp").write_text("int fine() { return 1; }\n")
    (source / "broken.cpp").write_text("this is not C++\n")
    with pytest.raises(native.KernelUnavailable, match=r"compiling broken\.cpp failed"):
        native.build_library(source, [])
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(native.KernelUnavailable, match="no C\\+\\+ compiler"):
        native.build_library(source, [])


def test_python_and_the_compiled_kernels_share_one_format_table():
    """csrc/formats.h as the library compiled it (its ``formats`` op) is the table Python reads
    (`spinserve.ops.formats`), and every other Python table of ids and sizes follows it."""
    compiled = getattr(torch.ops, native.load()).formats()
    ours = [f"{f.name} {f.id} {f.base} {f.weights} {f.bytes} {f.rows}" for f in FORMATS.values()]
    assert compiled == ours
    assert len(ours) == 12 and FORMATS[int(Q4_K)].bytes == 144 and Q4_K_X8 == 1012
    for qtype, kind in BLOCK_TYPES.items():
        assert (kind.name, kind.weights, kind.bytes, kind.rows) == (
            FORMATS[qtype].name, FORMATS[qtype].weights, FORMATS[qtype].bytes, FORMATS[qtype].rows
        )  # fmt: skip
    for mixed, base in interleave.BASE.items():
        assert interleave.CHUNK_BYTES[mixed] == 8 * FORMATS[mixed].bytes
        assert interleave.GGUF_BYTES[base] == FORMATS[base].bytes


@pytest.mark.parametrize("quant", [Q4_K_X8, Q6_K_X8, *SMALL_X8], ids=_name)
def test_the_wide_passes_give_the_same_bits(quant):
    """Two chunks side by side in 512-bit registers (from 4 rows, where this CPU's 512-bit
    dpbusd pays: `set_wide_passes`) against one chunk in 256-bit ones: each lane does the same
    operations. 40 output groups of 8 (pairs, and an odd one left at the end of a thread's
    range), 1-13 rows (passes of 8 + 5, one below the wide passes' 4)."""
    weight = _weight(quant, 8 * 41, 768, seed=4)
    was = set_wide_passes(True)
    try:
        for rows in (1, 3, 4, 8, 13):
            x = torch.randn(rows, 768) * 3
            set_wide_passes(True)
            wide = block_linear(x, weight)
            set_wide_passes(False)
            narrow = block_linear(x, weight)
            assert torch.equal(wide, narrow), rows
            assert torch.equal(
                wide, _build_op(quant, "portable")(x, weight.blocks, weight.qtype, 8 * 41, False)
            )
    finally:
        set_wide_passes(was)


def test_the_environment_turns_the_wide_passes_off():
    """SPINSERVE_WIDE_KERNELS=0 overrides the measurement made at first use (a new process:
    the mode is decided once per process)."""
    code = "from spinserve.ops.blocks import set_wide_passes; print(set_wide_passes(True))"
    env = {**os.environ, "SPINSERVE_WIDE_KERNELS": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"

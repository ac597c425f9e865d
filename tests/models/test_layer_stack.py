"""The layers in one call of our kernel (`LayerStack`) on quantized weights: the same model as
the layer-by-layer torch path, and each row's bits independent of the rows beside it.

(For fp32 weights tests/models/test_parity.py holds both paths to transformers' reference.)
The paths differ in the last bits of their norms and activations; with int8-rounded
activations such a difference can move an activation across a rounding step, so the two agree
to a few hundredths of a logit, not to the bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from tiny_models import write_zoo_folder

from spinserve.config.engine import RuntimeConfig
from spinserve.loading.loader import load
from spinserve.models.decoder import Decoder
from spinserve.ops import native
from spinserve.ops.blocks import set_wide_passes
from spinserve.runtime.runner import ModelRunner
from spinserve.types.batch import SeqChunk, StepBatch

pytestmark = pytest.mark.skipif(not native.available(), reason="our kernels do not build here")
IDS = list(range(5, 45))
FORMS = [
    ("llama", Q.Q4_K, "auto"),  # Q4_K and Q6_K blocks, our kernels
    ("qwen2", Q.Q8_0, "auto"),  # 32-weight blocks, our kernel; q/k/v biases
    ("llama", Q.Q4_K, "int4"),  # torch's int4 kernel, some bf16 dense linears
    ("qwen2", Q.Q8_0, "int4"),  # bf16 dense linears, row by row
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, Q], Path]:
    root = tmp_path_factory.mktemp("stack")
    return {
        (arch, quant): write_zoo_folder(arch, root / f"{arch}-{quant.name}", quant)
        for arch, quant in {(a, q) for a, q, _ in FORMS}
    }


def logits(
    model: Decoder, chunks: list[SeqChunk], kv_dtype: torch.dtype | None = None
) -> torch.Tensor:
    return ModelRunner(model, num_blocks=32, block_size=8, kv_dtype=kv_dtype).execute(
        StepBatch(chunks)
    )


@pytest.mark.parametrize(("arch", "quant", "weights"), FORMS)
def test_stack_computes_the_layers_as_the_torch_path(folders, arch, quant, weights):
    model = load(str(folders[arch, quant]), RuntimeConfig(weights=weights)).model
    assert model.layer_stack() is not None
    chunk = SeqChunk("a", IDS, 0, [6, 2, 4, 0, 1], len(IDS))
    stacked = logits(model, [chunk])
    model.fused = False
    assert model.layer_stack() is None
    layered = logits(model, [chunk])
    scale = layered.abs().max().item()
    assert (stacked - layered).abs().max().item() <= 0.02 * scale
    assert torch.equal(stacked.argmax(-1), layered.argmax(-1))


def test_a_row_has_the_same_bits_alone_in_a_verification_and_in_a_batch(folders):
    model = load(str(folders["llama", Q.Q4_K])).model
    assert model.layer_stack() is not None
    prompt, drafts = IDS[:20], IDS[20:28]
    other = [SeqChunk("b", IDS[::-1], 0, [10, 11, 12, 13, 14], 1)]
    runner = ModelRunner(model, num_blocks=32, block_size=8)
    runner.execute(StepBatch([SeqChunk("a", prompt, 0, [0, 1, 2, 3], 0)]))
    verified = runner.execute(StepBatch([SeqChunk("a", drafts, 20, [0, 1, 2, 3], 8)]))
    for i, token in enumerate(drafts):
        alone = runner.execute(StepBatch([SeqChunk("a", [token], 20 + i, [0, 1, 2, 3], 1)]))
        beside = runner.execute(
            StepBatch([*other, SeqChunk("a", [token], 20 + i, [0, 1, 2, 3], 1)])
        )
        assert torch.equal(alone[0], verified[i])
        assert torch.equal(beside[1], verified[i])


@pytest.mark.parametrize("variant", ["avx2", "portable"])
@pytest.mark.parametrize("quant", [Q.Q4_K, Q.Q8_0], ids=lambda q: q.name)
def test_every_build_of_the_stack_gives_the_same_bits(folders, quant, variant):
    """The layer stack (its norms, rotary, SiLU and the block kernels it calls) built without
    AVX-512 and without AVX2: a verification's logits are the same bits as this machine's."""
    arch = "llama" if quant == Q.Q4_K else "qwen2"
    model = load(str(folders[arch, quant])).model
    stack = model.layer_stack()
    assert stack is not None
    chunk = SeqChunk("a", IDS, 0, [6, 2, 4, 0, 1], len(IDS))
    native_bits = logits(model, [chunk])
    stack.op = getattr(torch.ops, native.load(variant)).decoder_layers
    assert torch.equal(logits(model, [chunk]), native_bits)


@pytest.mark.parametrize("quant", [Q.Q4_K, Q.Q8_0], ids=lambda q: q.name)
def test_the_wide_passes_give_the_stack_the_same_bits(folders, quant):
    """A verification of 40 rows with the kernels' 512-bit passes forced on and off
    (`set_wide_passes`; on a CPU without AVX-512 VNNI both are the 256-bit passes)."""
    arch = "llama" if quant == Q.Q4_K else "qwen2"
    model = load(str(folders[arch, quant])).model
    chunk = SeqChunk("a", IDS, 0, [6, 2, 4, 0, 1], len(IDS))
    was = set_wide_passes(True)
    try:
        wide = logits(model, [chunk])
        set_wide_passes(False)
        assert torch.equal(logits(model, [chunk]), wide)
    finally:
        set_wide_passes(was)


def test_the_kernel_names_a_malformed_call():
    ops = getattr(torch.ops, native.load())
    cache = torch.zeros(8, 1, 4)
    with pytest.raises(RuntimeError, match="weights and 7 kinds per layer"):
        ops.decoder_layers(
            torch.zeros(1, 8), torch.ones(1, 4), torch.zeros(1, 4), [cache], [cache],
            torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
            torch.tensor([0, 1]), [torch.ones(8)], [-3] * 7, 2, 1, 1e-6, 0.5,
        )  # fmt: skip


@pytest.mark.parametrize("quant", [Q.Q4_K, Q.Q8_0], ids=lambda q: q.name)
def test_a_float16_cache_gives_the_stack_and_the_torch_path_the_same_model(folders, quant):
    """Keys and values kept in float16 (`--kv-cache-dtype float16`): the stack (rounding as it
    writes, converting as attention reads) against the torch path on the same cache, a
    prefill and then a verification over the cached keys; and near the float32 cache (within
    10% of the logit scale: a random untrained model carries the keys' rounding through
    int8-rounded activations; on SmolLM2 see tests/integration)."""
    arch = "llama" if quant == Q.Q4_K else "qwen2"
    model = load(str(folders[arch, quant])).model
    assert model.layer_stack() is not None

    def run(fused: bool, kv_dtype: torch.dtype) -> torch.Tensor:
        model.fused = fused
        runner = ModelRunner(model, num_blocks=32, block_size=8, kv_dtype=kv_dtype)
        runner.execute(StepBatch([SeqChunk("a", IDS[:30], 0, [6, 2, 4, 0, 1], 0)]))
        return runner.execute(StepBatch([SeqChunk("a", IDS[30:], 30, [6, 2, 4, 0, 1], 10)]))

    try:
        stacked, layered = run(True, torch.float16), run(False, torch.float16)
        exact = run(True, torch.float32)
    finally:
        model.fused = True
    assert runner_cache_dtype(model, torch.float16) == torch.float16
    scale = layered.abs().max().item()
    assert (stacked - layered).abs().max().item() <= 0.02 * scale
    assert torch.equal(stacked.argmax(-1), layered.argmax(-1))
    assert (stacked - exact).abs().max().item() <= 0.1 * scale


def runner_cache_dtype(model: Decoder, kv_dtype: torch.dtype) -> torch.dtype:
    return ModelRunner(model, num_blocks=2, block_size=8, kv_dtype=kv_dtype).kv_cache.k[0].dtype


@pytest.mark.parametrize("variant", ["avx2", "portable"])
def test_every_build_of_the_stack_gives_the_same_bits_on_a_float16_cache(folders, variant):
    model = load(str(folders["llama", Q.Q4_K])).model
    stack = model.layer_stack()
    assert stack is not None
    chunk = SeqChunk("a", IDS, 0, [6, 2, 4, 0, 1], len(IDS))
    native_bits = logits(model, [chunk], torch.float16)
    stack.op = getattr(torch.ops, native.load(variant)).decoder_layers
    assert torch.equal(logits(model, [chunk], torch.float16), native_bits)

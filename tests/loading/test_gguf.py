"""GGUF reading: metadata -> config, tensors -> Hugging Face layout, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import hf_model, write_gguf, write_zoo_folder
from transformers import AutoModelForCausalLM

from spinserve.config.engine import RuntimeConfig
from spinserve.config.model import ModelConfig
from spinserve.loading.gguf_file import (
    hf_config,
    hf_tensor_name,
    int4_blocks,
    iter_tensors,
    open_gguf,
)
from spinserve.loading.loader import load
from spinserve.loading.packed import is_current, packed_path
from spinserve.models.decoder import Decoder
from spinserve.ops import native
from spinserve.ops.blocks import BlockWeight
from spinserve.ops.quant import Int4Weight, Int8Weight
from spinserve.runtime.runner import ModelRunner
from spinserve.types.batch import SeqChunk, StepBatch
from spinserve.types.errors import ModelLoadError


def test_f32_gguf_round_trips_exactly(arch, tmp_path):
    """Unpermuting llama q/k and un-shifting gemma norms restore the original tensors."""
    path = write_gguf(arch, tmp_path / "m.gguf", GGMLQuantizationType.F32)
    reader = open_gguf(path)
    hf = hf_config(reader)
    original = hf_model(arch).state_dict()
    for name, tensor in iter_tensors(reader, hf):
        torch.testing.assert_close(tensor, original[name], rtol=0, atol=1e-6, msg=name)
    config = ModelConfig.from_hf_dict(hf)
    expected = ModelConfig.from_hf_dict(hf_model(arch).config.to_dict())
    for field in (
        "architecture",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "rope_theta",
        "layer_types",
        "sliding_window",
        "softmax_scale",
    ):
        assert getattr(config, field) == getattr(expected, field), field


@pytest.mark.parametrize("quant", [GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q5_0])
def test_quantized_gguf_matches_transformers_reading_the_same_file(arch, tmp_path, quant):
    path = write_gguf(arch, tmp_path / "m.gguf", quant)
    # transformers' GGUF reader ignores gemma3's attention scale and layer pattern (it assumes
    # the defaults of the released checkpoints), so those two are given to it explicitly.
    overrides = (
        {"query_pre_attn_scalar": 16, "layer_types": ["sliding_attention", "full_attention"]}
        if arch == "gemma3"
        else {}
    )
    ref = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="m.gguf", dtype=torch.float32, **overrides
    )
    reader = open_gguf(path)
    hf = hf_config(reader)
    model = Decoder(ModelConfig.from_hf_dict(hf))
    model.load_weights(iter_tensors(reader, hf))
    ids = list(range(3, 33))
    logits = ModelRunner(model, 8, 8).execute(StepBatch([SeqChunk("a", ids, 0, [0, 1, 2, 3], 30)]))
    with torch.no_grad():
        expected = ref.eval()(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4 * expected.abs().max().item())


def test_gemma3_metadata(tmp_path):
    hf = hf_config(open_gguf(write_gguf("gemma3", tmp_path / "g.gguf", GGMLQuantizationType.F32)))
    config = ModelConfig.from_hf_dict(hf)
    assert config.layer_types == ("sliding_attention", "full_attention")
    assert config.sliding_window == 8
    assert config.norm_weight_offset == 1.0 and config.scale_embeddings
    assert config.tie_word_embeddings


@pytest.mark.parametrize(
    ("gguf_name", "arch", "hf_name"),
    [
        ("token_embd.weight", "llama", "model.embed_tokens.weight"),
        ("blk.3.attn_q.bias", "qwen2", "model.layers.3.self_attn.q_proj.bias"),
        ("blk.0.ffn_norm.weight", "llama", "model.layers.0.post_attention_layernorm.weight"),
        ("blk.0.ffn_norm.weight", "gemma3", "model.layers.0.pre_feedforward_layernorm.weight"),
        (
            "blk.1.post_attention_norm.weight",
            "gemma3",
            "model.layers.1.post_attention_layernorm.weight",
        ),
        (
            "blk.2.post_ffw_norm.weight",
            "gemma3",
            "model.layers.2.post_feedforward_layernorm.weight",
        ),
        ("output.weight", "qwen2", "lm_head.weight"),
    ],
)
def test_tensor_names(gguf_name, arch, hf_name):
    assert hf_tensor_name(gguf_name, arch) == hf_name


def test_truncated_gguf_is_a_clear_error(tmp_path):
    path = write_gguf("llama", tmp_path / "m.gguf", GGMLQuantizationType.Q8_0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load(str(path))


def test_garbage_gguf_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf file at all" * 100)
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        load(str(path))


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config.json"):
        load(str(tmp_path))


def test_folder_with_unsupported_architecture(tmp_path: Path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="unsupported model_type 'bert'"):
        load(str(tmp_path))


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ModelLoadError, match=r"known models: .*smollm2-135m-instruct"):
        load("no-such-model")


@pytest.mark.parametrize("quant", [GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1])
def test_int4_blocks_are_what_gguf_dequantizes(quant):
    data = np.random.default_rng(0).standard_normal((48, 96)).astype(np.float32)
    raw = quantize(data, quant)
    q, scale, offset = int4_blocks(raw, quant, 48)
    expected = dequantize(raw, quant).reshape(48, 96)
    assert q.shape == (48, 96) and q.max() <= 15 and scale.shape == (48, 3)
    rebuilt = np.repeat(scale, 32, axis=1) * q + np.repeat(offset, 32, axis=1)
    np.testing.assert_array_equal(rebuilt, expected)


def test_int4_blocks_of_q4_k_are_what_gguf_dequantizes():
    """Q4_K from random bytes (gguf cannot quantize to it): every bit pattern of the 6-bit
    scales and mins and of the nibbles must unpack as llama.cpp's dequantizer does."""
    rng = np.random.default_rng(1)
    rows, blocks_per_row = 8, 2
    raw = rng.integers(0, 256, (rows, blocks_per_row, 144), dtype=np.uint8)
    halves = rng.uniform(1e-3, 1e-2, (rows, blocks_per_row, 2)).astype(np.float16)
    raw[..., 0:4] = halves.view(np.uint8).reshape(rows, blocks_per_row, 4)
    raw = raw.reshape(rows, blocks_per_row * 144)
    q, scale, offset = int4_blocks(raw, GGMLQuantizationType.Q4_K, rows)
    expected = dequantize(raw, GGMLQuantizationType.Q4_K).reshape(rows, 512)
    rebuilt = np.repeat(scale, 32, axis=1) * q + np.repeat(offset, 32, axis=1)
    np.testing.assert_allclose(rebuilt, expected, rtol=1e-6, atol=0)


def _logits(model, ids):
    batch = StepBatch([SeqChunk("a", ids, 0, [0, 1, 2, 3], len(ids))])
    return ModelRunner(model, 8, 8).execute(batch)


@pytest.mark.parametrize("quant", [GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1])
def test_4bit_gguf_runs_on_our_kernels_or_the_int4_kernel_close_to_the_fp32_reference(
    arch, tmp_path, quant
):
    """By default Q4_0/Q4_1 blocks stay as they are (8 rows interleaved) for our kernel, with
    int8-rounded activations as llama.cpp computes them; ``--weights int4`` puts them on
    torch's int4 kernel (bf16 activations). Both close to the fp32 reference."""
    folder = write_zoo_folder(arch, tmp_path, quant)
    reader = open_gguf(tmp_path / "gguf" / "m.gguf")
    reference = Decoder(ModelConfig.from_hf_dict(hf_config(reader)))  # the GGUF in fp32
    reference.load_weights(iter_tensors(reader, hf_config(reader)))
    ids = list(range(3, 33))
    expected = _logits(reference, ids)
    for weights, kind, tolerance in (("auto", BlockWeight, 0.15), ("int4", Int4Weight, 3e-2)):
        fast = load(str(folder), RuntimeConfig(weights=weights))
        q_proj = fast.model.model.layers[0].self_attn.q_proj
        assert isinstance(q_proj.quantized, kind) and q_proj.weight is None
        if kind is BlockWeight:
            assert q_proj.quantized.type_name == f"{quant.name}x8"
        assert fast.model.weight_bytes() < reference.weight_bytes() / 4
        # close, not equal: rounded activations around exact 4-bit weights (int8 per 32
        # columns: on these random models' noise-sensitive logits ~3x bf16's error)
        got = _logits(fast.model, ids)
        torch.testing.assert_close(
            got, expected, rtol=0, atol=tolerance * expected.abs().max().item()
        )
    bf16 = load(str(folder), RuntimeConfig(weights="bfloat16")).model
    assert bf16.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16


def _fp32_reference(gguf: Path) -> Decoder:
    reader = open_gguf(gguf)
    reference = Decoder(ModelConfig.from_hf_dict(hf_config(reader)))  # the GGUF in fp32
    reference.load_weights(iter_tensors(reader, hf_config(reader)))
    return reference


def test_kquant_gguf_runs_on_our_kernels_close_to_the_fp32_reference(arch, tmp_path):
    """A Q4_K_M-like file: Q4_K and Q6_K matrices stay in their blocks for our kernel (the
    output matrix too; 8 rows interleaved where the row count allows), saved once and read
    back to the same logits."""
    folder = write_zoo_folder(arch, tmp_path, GGMLQuantizationType.Q4_K)
    fast = load(str(folder)).model  # weights=auto
    layer = fast.model.layers[0]

    def stored(k_quant: str, rows: int) -> str:
        return k_quant + "x8" if k_quant in ("Q4_K", "Q6_K") and rows % 8 == 0 else k_quant

    q_proj, down_proj = layer.self_attn.q_proj.quantized, layer.mlp.down_proj.quantized
    assert q_proj.type_name == stored("Q4_K", q_proj.shape[0]) == "Q4_Kx8"
    assert down_proj.type_name == stored("Q6_K", down_proj.shape[0])
    # the output matrix's blocks, or (tied) the embedding's: multiplied as they are
    embedding = next(
        t for t in open_gguf(tmp_path / "gguf" / "m.gguf").tensors if t.name == "token_embd.weight"
    )
    tied = fast.config.tie_word_embeddings
    head_type = stored(embedding.tensor_type.name if tied else "Q6_K", fast.config.vocab_size)
    assert fast.lm_head.quantized.type_name == head_type and fast.lm_head.weight is None
    assert packed_path(folder, "gguf").is_file()
    reference = _fp32_reference(tmp_path / "gguf" / "m.gguf")
    assert fast.weight_bytes() < reference.weight_bytes() / 4
    # Each matrix is the GGUF's (rows in the right order: llama's q/k unpermuted)...
    params = dict(reference.named_parameters(remove_duplicate=False))  # a tied lm_head too
    for name, module in fast.named_modules():
        if isinstance(getattr(module, "quantized", None), BlockWeight):
            x = torch.randn(3, module.quantized.shape[1])
            exact = x @ params[f"{name}.weight"].T
            assert (module(x) - (module.bias if module.bias is not None else 0) - exact).norm() < (
                2e-2 * exact.norm()
            ), name
    # ...and the model close to the reference: activations are rounded to int8 per 256
    # columns (as llama.cpp does for these blocks), about 3x the error of bf16 activations
    # on these random models (whose logits are noise-sensitive).
    ids = list(range(3, 33))
    got, expected = _logits(fast, ids), _logits(reference, ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=0.15 * expected.abs().max().item())
    again = load(str(folder)).model  # from the saved file
    assert torch.equal(_logits(again, ids), got)
    torch_kernel = load(str(folder), RuntimeConfig(weights="int4")).model
    assert isinstance(torch_kernel.model.layers[0].self_attn.q_proj.quantized, Int4Weight)


def test_without_our_kernels_blocks_fall_back_to_torch(tmp_path, monkeypatch):
    folder = write_zoo_folder("qwen2", tmp_path, GGMLQuantizationType.Q4_K)
    monkeypatch.setenv(native.DISABLE_ENV_VAR, "1")
    model = load(str(folder)).model
    assert isinstance(model.model.layers[0].self_attn.q_proj.quantized, Int4Weight)
    assert packed_path(folder, "int4").is_file()
    monkeypatch.delenv(native.DISABLE_ENV_VAR)
    assert isinstance(load(str(folder)).model.model.layers[0].mlp.up_proj.quantized, BlockWeight)


def test_int8_form_requantizes_what_is_not_4bit(tmp_path):
    """The drafters' form: GGUF blocks as they are, every other linear weight (f16 here)
    per-row int8, saved in a file of its own beside the exact form's."""
    folder = write_zoo_folder("llama", tmp_path, GGMLQuantizationType.F16)
    fast = load(str(folder), RuntimeConfig(weights="int8")).model
    assert isinstance(fast.model.layers[0].mlp.up_proj.quantized, Int8Weight)
    assert packed_path(folder, "gguf-int8").is_file() and not packed_path(folder).is_file()
    reader = open_gguf(tmp_path / "gguf" / "m.gguf")
    reference = Decoder(ModelConfig.from_hf_dict(hf_config(reader)))
    reference.load_weights(iter_tensors(reader, hf_config(reader)))
    ids = list(range(3, 33))
    got, expected = _logits(fast, ids), _logits(reference, ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-2 * expected.abs().max().item())
    again = load(str(folder), RuntimeConfig(weights="int8")).model
    assert torch.equal(_logits(again, ids), got)
    # Read back from the file, int8 data must still start on 64-byte boundaries: torch's int8
    # kernel crashed the process (general protection fault) on safetensors' 8-byte offsets.
    up = again.model.layers[0].mlp.up_proj.quantized
    assert up.weight.data_ptr() % 64 == 0 and up.scales.data_ptr() % 64 == 0


def test_int4_without_a_gguf_is_a_clear_error(tiny_folders):
    with pytest.raises(ModelLoadError, match="no GGUF"):
        load(str(tiny_folders["llama"]), RuntimeConfig(weights="int4"))
    auto = load(str(tiny_folders["llama"])).model  # auto: as stored
    assert auto.model.layers[0].mlp.up_proj.weight.dtype == torch.float32


def test_unknown_weight_form_is_a_clear_error():
    with pytest.raises(ValueError, match="weights must be one of"):
        RuntimeConfig(weights="int3")


def test_zoo_folder_packs_its_linears_once(tmp_path):
    """The first load packs and saves the linear weights, the next reads them back; both
    compute the same logits. A file from an older packing, or one that cannot be read, is
    packed again."""
    folder = write_zoo_folder("qwen2", tmp_path, GGMLQuantizationType.Q4_1)
    first = load(str(folder))
    saved = packed_path(folder, "gguf")
    assert saved.is_file() and not list(saved.parent.glob(".*tmp*")) and is_current(saved)
    second = load(str(folder))
    ids = list(range(3, 20))
    expected = _logits(first.model, ids)
    assert torch.equal(_logits(second.model, ids), expected)
    assert second.model.model.layers[1].mlp.down_proj.quantized is not None
    with safe_open(saved, framework="pt") as f:  # as an older spinserve wrote it
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    save_file(tensors, saved, metadata={"format": "pt"})
    assert not is_current(saved)
    assert torch.equal(_logits(load(str(folder)).model, ids), expected) and is_current(saved)
    saved.write_bytes(b"garbage")
    assert torch.equal(_logits(load(str(folder)).model, ids), expected) and is_current(saved)

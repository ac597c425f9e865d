"""GGUF reading: metadata -> config, tensors -> Hugging Face layout, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType
from tiny_models import hf_model, write_gguf
from transformers import AutoModelForCausalLM

from spinserve.config.model import ModelConfig
from spinserve.loading.gguf_file import hf_config, hf_tensor_name, iter_tensors, open_gguf
from spinserve.loading.loader import load
from spinserve.models.decoder import Decoder
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

"""Hostile model files are refused before anything large is built, with one line naming the
field at fault: GGUF metadata and tensor lists, config.json, safetensors headers, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gguf_surgery import DROP, field_offsets, patch, read_model, rewrite, tiny_gguf, with_counts
from tiny_models import ARCHITECTURES, hf_model, write_hf_folder

from spinserve.config.model import ModelConfig
from spinserve.loading.loader import load
from spinserve.loading.shapes import weight_shapes
from spinserve.models.decoder import Decoder
from spinserve.types.errors import ModelLoadError


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gguf(tmp_path_factory.mktemp("hostile"))


def refused(path: Path, match: str) -> str:
    """The one-line message refusing ``path`` (which must name ``match``), within a second."""
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=match) as info:
        read_model(path)
    assert time.perf_counter() - start < 1.5
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_the_tiny_file_loads(good):
    assert read_model(good).config.num_layers == 2


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        (
            "qwen2.attention.head_count",
            0,
            r"qwen2.attention.head_count is 0; it must be a positive divisor of "
            r"qwen2.embedding_length \(64\)",
        ),
        ("qwen2.attention.head_count", 5, r"head_count is 5; .* divisor of .*embedding_length"),
        ("qwen2.attention.head_count_kv", 3, r"head_count_kv is 3; .* divisor of .*head_count"),
        ("qwen2.embedding_length", 2**31 - 1, r"qwen2.embedding_length is 2147483647"),
        ("qwen2.feed_forward_length", 0, r"qwen2.feed_forward_length is 0"),
        ("qwen2.vocab_size", 2**40, r"qwen2.vocab_size is 1099511627776"),
        ("qwen2.context_length", 2**40, r"qwen2.context_length is 1099511627776"),
        ("qwen2.block_count", 100_000, r"qwen2.block_count is 100000"),
        ("qwen2.block_count", 3, r"qwen2.block_count is 3 but the file has tensors for 2"),
        ("qwen2.block_count", DROP, r"lacks 'qwen2.block_count'"),
        ("qwen2.attention.head_count", "four", r"head_count is 'four'; it must be an integer"),
        ("qwen2.attention.head_count", [4, 4], r"head_count is \[4, 4\]; it must be an integer"),
        ("qwen2.attention.key_length", 15, r"key_length is 15; .*even"),
        ("qwen2.attention.layer_norm_rms_epsilon", -1.0, r"layer_norm_rms_epsilon is -1.0"),
        ("qwen2.rope.freq_base", 0.0, r"rope.freq_base is 0.0"),
        ("tokenizer.ggml.token_type", [3], r"tokenizer.ggml.token_type has 1 entries"),
        ("tokenizer.ggml.eos_token_id", "x", r"eos_token_id is 'x'"),
    ],
)
def test_bad_metadata_names_the_key(good, tmp_path, key, value, match):
    refused(rewrite(good, tmp_path / "bad.gguf", {key: value}), match)


def test_block_count_far_above_the_tensors_builds_nothing(good, tmp_path):
    """Once 100,000 layers were built (64 s, 4.8 GB) before the missing tensors were noticed."""
    path = rewrite(good, tmp_path / "bad.gguf", {"qwen2.block_count": 1000})
    refused(path, r"block_count is 1000 but the file has tensors for 2 layers")


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"token_embd.weight": np.zeros((264, 32))}, r"token_embd.weight has shape \[264, 32\]"),
        ({"blk.1.ffn_down.weight": np.zeros((64, 64))}, r"blk.1.ffn_down.weight has shape"),
        ({"blk.7.attn_norm.weight": np.zeros(64)}, r"blk.7.attn_norm.weight is for layer 7"),
        ({"blk.x.attn_norm.weight": np.zeros(64)}, r"unexpected GGUF tensor 'blk.x.attn_norm"),
        ({"blk.0.attn_norm": np.zeros(64)}, r"unexpected GGUF tensor 'blk.0.attn_norm'"),
        ({"rope_freqs.weight": np.zeros(8)}, r"unexpected GGUF tensor 'rope_freqs.weight'"),
        ({"blk.1.attn_v.weight": DROP}, r"lacks tensor blk.1.attn_v.weight"),
    ],
)
def test_tensors_that_do_not_fit_the_metadata(good, tmp_path, tensors, match):
    refused(rewrite(good, tmp_path / "bad.gguf", tensors=tensors), match)


def test_header_counts_beyond_the_file_size(good, tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(with_counts(good.read_bytes(), kvs=2**62))
    refused(path, r"kv_count is 4611686018427387904, .* at most")
    path.write_bytes(with_counts(good.read_bytes(), tensors=2**40))
    refused(path, r"tensor_count is 1099511627776, ")


def test_huge_array_and_string_lengths(good, tmp_path):
    """The gguf reader loops forever over an array whose length runs past the file's end."""
    offsets, data = field_offsets(good), good.read_bytes()
    path = tmp_path / "bad.gguf"
    path.write_bytes(patch(data, offsets["tokenizer.ggml.token_type#value"] + 4, "Q", 2**60))
    refused(path, r"tokenizer.ggml.token_type: array of 1152921504606846976 .* past the end")
    path.write_bytes(patch(data, offsets["qwen2.block_count"], "Q", 2**63))
    refused(path, r"key of metadata entry \d+: string of 9223372036854775808 bytes")


def test_tensor_data_past_the_end(good, tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(good.read_bytes()[:-100])
    refused(path, r"tensor .* data .* past the end of the file")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("num_attention_heads", 0, r"num_attention_heads is 0; it must be"),
        ("hidden_size", 2**31 - 1, r"hidden_size is 2147483647"),
        ("num_hidden_layers", 100_000, r"num_hidden_layers is 100000"),
        ("num_hidden_layers", 3, r"num_hidden_layers is 3 but the weights have 2 layers"),
        ("num_key_value_heads", 3, r"num_key_value_heads is 3"),
        ("head_dim", 15, r"head_dim is 15; .*even"),
        ("vocab_size", "264", r"vocab_size is '264'; it must be an integer"),
        (
            "intermediate_size",
            96,
            r"mlp.down_proj.weight has shape \[64, 128\] but config.json implies \[64, 96\]",
        ),
        ("rms_norm_eps", 0, r"rms_norm_eps is 0"),
        ("max_position_embeddings", -5, r"max_position_embeddings is -5"),
    ],
)
def test_bad_config_json_names_the_key(tmp_path, key, value, match):
    folder = write_hf_folder("llama", tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: value}))
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=match) as info:
        load(str(folder))
    assert time.perf_counter() - start < 2 and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("sliding_window_pattern", 0, r"sliding_window_pattern is 0"),
        ("query_pre_attn_scalar", 0, r"query_pre_attn_scalar is 0"),
        ("sliding_window", 0, r"sliding_window is 0"),
    ],
)
def test_bad_gemma3_config_json(tmp_path, key, value, match):
    config = hf_model("gemma3").config.to_dict()
    config.pop("layer_types")
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf_dict({**config, key: value})


def test_damaged_safetensors_header(tmp_path):
    folder = write_hf_folder("llama", tmp_path / "m")
    weights = next(folder.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes((2**40).to_bytes(8, "little") + data[8:])
    with pytest.raises(ModelLoadError, match=r"model.safetensors") as info:
        load(str(folder))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_weight_shapes_are_the_decoders(arch):
    """The checks' table of weights is exactly what `Decoder.load_weights` takes."""
    config = ModelConfig.from_hf_dict(hf_model(arch).config.to_dict())
    model = Decoder(config)
    params = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
    if config.tie_word_embeddings:
        params.pop("lm_head.weight")
    assert weight_shapes(config) == params


@pytest.mark.parametrize("command", ["generate", "serve"])
def test_cli_prints_one_line(good, tmp_path, command):
    path = rewrite(good, tmp_path / "bad.gguf", {"qwen2.attention.head_count": 0})
    args = ["--model", str(path)] + (["hello"] if command == "generate" else ["--port", "8765"])
    run = subprocess.run(
        [sys.executable, "-m", "spinserve.cli.main", command, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode in (1, 2), run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: {path}: qwen2.attention.head_count is 0; it must be a positive "
        "divisor of qwen2.embedding_length (64)"
    ], run.stderr

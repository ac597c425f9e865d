"""Convert a GGUF file once into a fast-loading folder: config.json, safetensors, tokenizer.

The folder is a valid Hugging Face model folder (transformers loads it), holding fp32 weights
dequantized from the GGUF. Shards stay under ``SHARD_BYTES`` so conversion never holds the
whole model in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from spinserve.config.model import ModelConfig
from spinserve.loading.gguf_file import hf_config, iter_tensors, open_gguf
from spinserve.loading.tokenizer import hf_tokenizer_from_gguf
from spinserve.types.errors import ModelLoadError

SHARD_BYTES = 1 << 30
INDEX_FILE = "model.safetensors.index.json"


def convert_gguf_to_folder(
    gguf_path: Path, out_dir: Path, progress: Callable[[str], None] | None = None
) -> None:
    """Write ``out_dir``/{config.json, model-*.safetensors, index, tokenizer files}."""
    say = progress or (lambda _msg: None)
    reader = open_gguf(gguf_path)
    hf = hf_config(reader)
    try:
        config = ModelConfig.from_hf_dict(hf)
    except ValueError as exc:
        raise ModelLoadError(f"{gguf_path}: {exc}") from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    say(f"dequantizing {len(reader.tensors)} tensors of {gguf_path.name}")
    weight_map = _write_shards(iter_tensors(reader, hf), out_dir, say)
    (out_dir / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out_dir / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    say("building the tokenizer")
    hf_tokenizer_from_gguf(gguf_path).save_pretrained(out_dir)


def _write_shards(tensors, out_dir: Path, say: Callable[[str], None]) -> dict[str, str]:
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal shard, size
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, out_dir / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        say(f"wrote {name} ({size / 2**20:.0f} MiB)")
        shard, size = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > SHARD_BYTES:
            flush()
        shard[name] = tensor
        size += nbytes
    if shard:
        flush()
    return weight_map

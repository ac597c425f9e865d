"""Turn a GGUF file into Hugging Face files: the folder a fetch keeps, and the fp32 copy.

A fetch writes only config.json and the tokenizer files (`write_model_folder`): a load takes
its weights from the GGUF and packs them once (`spinserve.loading.packed`). The fp32
safetensors (`write_fp32_weights`, the weights dequantized as they are) are four to six times
the GGUF's size, so they are made only when asked for, by `--weights float32` or by a
transformers reference (`with_fp32_weights`), and then kept. Shards stay under
``SHARD_BYTES`` so writing them never holds the whole model in memory.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from spinserve.config.model import ModelConfig
from spinserve.loading import zoo
from spinserve.loading.gguf_file import hf_config, iter_tensors, open_gguf
from spinserve.loading.tokenizer import hf_tokenizer_from_gguf
from spinserve.types.errors import ModelLoadError

SHARD_BYTES = 1 << 30
Say = Callable[[str], None]


def write_model_folder(gguf_path: Path, out_dir: Path, progress: Say | None = None) -> None:
    """Write ``out_dir``/{config.json, tokenizer files}: what every load reads besides the
    weights."""
    say = progress or (lambda _msg: None)
    config = _config(gguf_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    say("building the tokenizer")
    hf_tokenizer_from_gguf(gguf_path).save_pretrained(out_dir)


def with_fp32_weights(folder: Path, progress: Say | None = None) -> Path:
    """``folder`` (a fetched zoo model) with its fp32 copy, dequantized now from the GGUF it
    came from when missing: for ``--weights float32`` and for transformers, which reads a
    Hugging Face folder."""
    if zoo.has_fp32_copy(folder):
        return folder
    gguf = zoo.source_gguf(folder)
    if gguf is None:
        raise ModelLoadError(
            f"{folder} has no fp32 weights and names no GGUF in the cache to make them from; "
            "fetch the model again (`spinserve models fetch NAME`)"
        )
    zoo.remove_dead_temps(folder.glob(".fp32.tmp-*"))
    tmp = folder / f".fp32.tmp-{os.getpid()}"
    try:
        write_fp32_weights(gguf, tmp, progress)
        for shard in sorted(tmp.glob(zoo.FP32_SHARDS)):
            shard.replace(folder / shard.name)
        (tmp / zoo.FP32_INDEX).replace(folder / zoo.FP32_INDEX)  # last: the copy is complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_fp32_weights(gguf_path: Path, out_dir: Path, progress: Say | None = None) -> None:
    """Write ``out_dir``/{model-*.safetensors, index}: every tensor dequantized to fp32."""
    say = progress or (lambda _msg: None)
    reader = open_gguf(gguf_path)
    hf = hf_config(reader)
    out_dir.mkdir(parents=True, exist_ok=True)
    say(f"dequantizing {len(reader.tensors)} tensors of {gguf_path.name} to fp32")
    weight_map = _write_shards(iter_tensors(reader, hf), out_dir, say)
    index = {"metadata": {}, "weight_map": weight_map}
    (out_dir / zoo.FP32_INDEX).write_text(json.dumps(index))


def _config(gguf_path: Path) -> ModelConfig:
    try:
        return ModelConfig.from_hf_dict(hf_config(open_gguf(gguf_path)))
    except ValueError as exc:
        raise ModelLoadError(f"{gguf_path}: {exc}") from exc


def _write_shards(
    tensors: Iterable[tuple[str, torch.Tensor]], out_dir: Path, say: Say
) -> dict[str, str]:
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

"""Find a model by zoo name or path and load it with its tokenizer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import Progress

from spinserve.config.engine import RuntimeConfig
from spinserve.config.model import ModelConfig
from spinserve.loading import zoo
from spinserve.loading.gguf_file import hf_config, iter_tensors, open_gguf
from spinserve.loading.hf_folder import iter_safetensors, read_config
from spinserve.loading.tokenizer import Tokenizer
from spinserve.models.decoder import Decoder
from spinserve.types.errors import ModelLoadError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready to run, its tokenizer, and where it came from."""

    name: str
    model: Decoder
    tokenizer: Tokenizer
    load_seconds: float

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def resolve(
    name_or_path: str,
    cache_dir: Path | None = None,
    fetch_missing: bool = True,
    progress: Progress | None = None,
) -> Path:
    """A folder or .gguf file for ``name_or_path``: a local path, or a zoo name (fetched if
    needed and allowed)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_dir() or path.suffix == ".gguf":
            return path
        raise ModelLoadError(f"{path} is neither a model folder nor a .gguf file")
    cache = zoo.resolve_cache_dir(str(cache_dir) if cache_dir else None)
    source = zoo.lookup(name_or_path)  # raises with the list of known names
    if zoo.is_fetched(source.name, cache):
        return zoo.model_dir(source.name, cache)
    if not fetch_missing:
        raise ModelLoadError(
            f"model {source.name!r} is not in the cache {cache} (or was converted by an "
            "older spinserve); "
            f"run `spinserve models fetch {source.name}`"
        )
    return zoo.fetch(source.name, cache, progress)


def load(
    name_or_path: str,
    runtime: RuntimeConfig | None = None,
    cache_dir: Path | None = None,
    fetch_missing: bool = True,
    progress: Progress | None = None,
) -> LoadedModel:
    """Load weights and tokenizer; a zoo model is fetched and converted first if missing."""
    runtime = runtime or RuntimeConfig()
    path = resolve(name_or_path, cache_dir, fetch_missing, progress)
    start = time.perf_counter()
    dtype = _DTYPES[runtime.dtype]
    if path.is_dir():
        model = Decoder(read_config(path), dtype)
        _fill(model, iter_safetensors(path), path)
        tokenizer = Tokenizer.from_folder(path, model.config.eos_token_ids)
    else:
        reader = open_gguf(path)
        hf = hf_config(reader)
        model = Decoder(_config(hf, path), dtype)
        _fill(model, iter_tensors(reader, hf), path)
        tokenizer = Tokenizer.from_gguf(path, model.config.eos_token_ids)
    model.eval()
    return LoadedModel(name_or_path, model, tokenizer, time.perf_counter() - start)


def _config(hf: dict, path: Path) -> ModelConfig:
    try:
        return ModelConfig.from_hf_dict(hf)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc


def _fill(model: Decoder, tensors, path: Path) -> None:
    try:
        model.load_weights(tensors)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc

"""Find a model by zoo name or path and load it with its tokenizer."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from gguf import GGUFReader
from rich.progress import Progress
from safetensors import SafetensorError

from spinserve.config.engine import RuntimeConfig
from spinserve.config.model import ModelConfig
from spinserve.loading import zoo
from spinserve.loading.gguf_file import hf_config, int4_names, iter_tensors, open_gguf
from spinserve.loading.hf_folder import iter_safetensors, read_config
from spinserve.loading.packed import packed_path, read_packed, write_packed
from spinserve.loading.tokenizer import Tokenizer
from spinserve.models.decoder import Decoder
from spinserve.ops.quant import Int4Weight
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
    gguf = path if path.suffix == ".gguf" else zoo.source_gguf(path)
    if runtime.weights == "int4" and gguf is None:
        raise ModelLoadError(
            f"{path}: --weights int4 keeps a GGUF's 4-bit blocks, and this model has no GGUF "
            "(use auto, bfloat16 or float32)"
        )
    reader = open_gguf(gguf) if gguf is not None else None
    hf = hf_config(reader) if reader is not None else None
    dtype = _DTYPES[runtime.dtype]
    linear_dtype = _linear_dtype(runtime.weights, reader is not None, dtype)
    config = read_config(path) if path.is_dir() else _config(hf, path)
    model = Decoder(config, dtype, linear_dtype)
    int4 = (
        int4_names(reader, model.linear_weight_names())
        if reader is not None and runtime.weights in ("auto", "int4")
        else frozenset()
    )
    if path.is_dir() and int4:
        linears = _packed_linears(path, reader, hf, model, int4)
        tensors = itertools.chain(
            ((name, t) for name, t in iter_safetensors(path) if name not in linears),
            linears.items(),
        )
        tokenizer = Tokenizer.from_folder(path, config.eos_token_ids)
    elif path.is_dir():
        tensors = iter_safetensors(path)
        tokenizer = Tokenizer.from_folder(path, config.eos_token_ids)
    else:
        tensors = iter_tensors(reader, hf, int4)
        tokenizer = Tokenizer.from_gguf(path, config.eos_token_ids)
    _fill(model, tensors, path)
    model.eval()
    return LoadedModel(name_or_path, model, tokenizer, time.perf_counter() - start)


def _packed_linears(
    folder: Path, reader: GGUFReader, hf: dict, model: Decoder, int4: frozenset[str]
) -> dict[str, torch.Tensor | Int4Weight]:
    """Every linear weight in its run-time form: from the saved file, or packed now and saved."""
    path = packed_path(folder)
    if path.is_file():
        try:
            return dict(read_packed(path))
        except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
            raise ModelLoadError(
                f"cannot read {path} ({exc}); delete it and load again to repack"
            ) from exc
    linears = model.linear_weight_names()
    weights: dict[str, torch.Tensor | Int4Weight] = dict(iter_tensors(reader, hf, int4, only=int4))
    for name, tensor in iter_safetensors(folder):
        if name in linears and name not in int4:
            weights[name] = tensor.to(model.linear_dtype)
    write_packed(path, weights)
    return weights


def _linear_dtype(weights: str, has_gguf: bool, dtype: torch.dtype) -> torch.dtype:
    if weights == "auto":
        return torch.bfloat16 if has_gguf else dtype
    return torch.bfloat16 if weights in ("int4", "bfloat16") else torch.float32


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

"""Find a model by zoo name or path and load it with its tokenizer."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from gguf import GGUFReader
from rich.progress import Progress
from safetensors import SafetensorError

from spinserve.config.engine import RuntimeConfig
from spinserve.config.model import ModelConfig
from spinserve.loading import zoo
from spinserve.loading.convert import with_fp32_weights
from spinserve.loading.gguf_file import (
    block_names,
    hf_config,
    int4_names,
    iter_tensors,
    open_gguf,
)
from spinserve.loading.hf_folder import iter_safetensors, read_config
from spinserve.loading.packed import is_current, packed_path, read_packed, write_packed
from spinserve.loading.tokenizer import Tokenizer
from spinserve.models.decoder import Decoder
from spinserve.models.embedding import EMBEDDING
from spinserve.ops.blocks import kernels_available
from spinserve.ops.quant import Int8Weight, QuantizedWeight
from spinserve.types.errors import ModelLoadError

log = logging.getLogger(__name__)

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
    """Load weights and tokenizer; a zoo model is fetched first if missing."""
    runtime = runtime or RuntimeConfig()
    path = resolve(name_or_path, cache_dir, fetch_missing, progress)
    start = time.perf_counter()
    gguf = path if path.suffix == ".gguf" else zoo.source_gguf(path)
    if runtime.weights == "int4" and gguf is None:
        raise ModelLoadError(
            f"{path}: --weights int4 keeps a GGUF's 4-bit blocks, and this model has no GGUF "
            "(use auto, bfloat16 or float32)"
        )
    dtype = _DTYPES[runtime.dtype]
    linear_dtype = _linear_dtype(runtime.weights, gguf is not None, dtype)
    # GGUF blocks go to our kernels when they build here (else torch's int4 kernel and bf16).
    blocks = gguf is not None and runtime.weights in ("auto", "int8") and kernels_available()
    if path.is_dir():
        model = Decoder(read_config(path), dtype, linear_dtype)
        tensors = _folder_weights(path, gguf, model, runtime.weights, blocks, progress)
        tokenizer = Tokenizer.from_folder(path, model.config.eos_token_ids)
    else:
        reader = open_gguf(path)
        hf = hf_config(reader)
        model = Decoder(_config(hf, path), dtype, linear_dtype)
        tensors = _gguf_weights(reader, hf, model, runtime.weights, blocks)
        tokenizer = Tokenizer.from_gguf(path, model.config.eos_token_ids)
    _fill(model, tensors, path)
    model.eval()
    return LoadedModel(name_or_path, model, tokenizer, time.perf_counter() - start)


def _folder_weights(
    folder: Path,
    gguf: Path | None,
    model: Decoder,
    form: str,
    blocks: bool,
    progress: Progress | None,
) -> Iterable[tuple[str, torch.Tensor | QuantizedWeight]]:
    """A folder's weights: a Hugging Face folder's as stored; a zoo model's fp32 copy (made
    now if missing) for ``float32``, else its packed file (packed now if missing)."""
    if gguf is None:
        zoo.check_weights_source(folder)
        return iter_safetensors(folder)
    if form == "float32":
        say = progress.console.print if progress is not None else None
        return iter_safetensors(with_fp32_weights(folder, say))
    return _packed_weights(folder, gguf, model, form, blocks).items()


def _packed_weights(
    folder: Path, gguf: Path, model: Decoder, form: str, blocks: bool
) -> dict[str, torch.Tensor | QuantizedWeight]:
    """Every weight of a zoo model in its run-time form: from the saved file, or read from
    the GGUF now and saved."""
    path = packed_path(folder, _packing(form, blocks))
    if path.is_file() and not is_current(path):
        log.info("%s was packed by an older spinserve; packing again", path)
    elif path.is_file():
        try:
            return dict(read_packed(path))
        except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
            raise ModelLoadError(
                f"cannot read {path} ({exc}); delete it and load again to repack"
            ) from exc
    reader = open_gguf(gguf)
    weights = dict(_gguf_weights(reader, hf_config(reader), model, form, blocks))
    write_packed(path, weights)
    return weights


def _gguf_weights(
    reader: GGUFReader, hf: dict, model: Decoder, form: str, blocks: bool
) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """Every weight of the GGUF in the run-time ``form``: blocks our kernels multiply kept
    (``blocks``), 4-bit blocks for torch's int4 kernel, the other linear weights in the
    model's linear dtype (per-row int8 for ``int8``), a quantized embedding in its blocks
    (`QuantizedEmbedding`; but for ``float32``, the reference), the rest in fp32 as
    dequantized."""
    linears = model.linear_weight_names()
    kept = block_names(reader, linears) if blocks else frozenset()
    if form != "float32":
        kept |= block_names(reader, frozenset({EMBEDDING}))
    quantized = form in ("auto", "int4", "int8")
    int4 = int4_names(reader, linears - kept) if quantized else frozenset()
    for name, tensor in iter_tensors(reader, hf, int4, blocks=kept):
        if name not in linears or not isinstance(tensor, torch.Tensor):
            yield name, tensor
        elif form == "int8":
            yield name, Int8Weight.quantize(tensor)
        else:
            yield name, tensor.to(model.linear_dtype)


def _packing(form: str, blocks: bool) -> str:
    """The saved file's form: what ``RuntimeConfig.weights`` became on this machine."""
    if blocks:
        return "gguf-int8" if form == "int8" else "gguf"
    return "int4" if form == "auto" else form


def _linear_dtype(weights: str, has_gguf: bool, dtype: torch.dtype) -> torch.dtype:
    if weights in ("auto", "int8"):
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

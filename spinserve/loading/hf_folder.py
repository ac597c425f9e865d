"""Hugging Face folders: config.json + *.safetensors (+ tokenizer files).

The config is checked against the safetensors headers (names, shapes, layers) before a model
is built, so a config.json that does not fit its weights is refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from spinserve.config.model import ModelConfig
from spinserve.loading.shapes import weight_shapes
from spinserve.types.errors import ModelLoadError


def read_config(folder: Path) -> ModelConfig:
    """The folder's config, checked against the weights' headers when it has weights."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{folder} has no config.json; is it a Hugging Face model folder?")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(hf, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    try:
        config = ModelConfig.from_hf_dict(hf)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    check_weights(folder, config)
    return config


def check_weights(folder: Path, config: ModelConfig) -> None:
    """Every tensor in the folder's shards is one ``config`` implies, with its shape, and the
    shards hold as many layers as ``num_hidden_layers`` (headers only: nothing is read)."""
    expected = weight_shapes(config)
    if config.tie_word_embeddings:  # a checkpoint may carry the tied copy; loading skips it
        expected["lm_head.weight"] = expected["model.embed_tokens.weight"]
    layers: set[int] = set()
    files = sorted(folder.glob("*.safetensors"))
    for file in files:
        for name, shape in _shapes(file).items():
            if name not in expected:
                raise ModelLoadError(f"{file}: unexpected tensor {name!r} for this config")
            if shape != list(expected[name]):
                raise ModelLoadError(
                    f"{file}: tensor {name} has shape {shape} but config.json implies "
                    f"{list(expected[name])}"
                )
            if name.startswith("model.layers."):
                layers.add(int(name.split(".")[2]))
    if files and len(layers) != config.num_layers:
        raise ModelLoadError(
            f"{folder / 'config.json'}: num_hidden_layers is {config.num_layers} but the "
            f"weights have {len(layers)} layers"
        )


def _shapes(file: Path) -> dict[str, list[int]]:
    try:
        with safe_open(file, framework="pt") as f:
            return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise ModelLoadError(f"cannot read {file}: {exc}") from exc


def safetensors_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no *.safetensors weights")
    return files


def iter_safetensors(
    folder: Path, wanted: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of every shard (or those whose name is ``wanted``), one at a time (a shard
    stays memory-mapped meanwhile); a tensor not wanted is never read."""
    for file in safetensors_files(folder):
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    if wanted is None or wanted(name):
                        yield name, f.get_tensor(name)
        except (OSError, RuntimeError, SafetensorError) as exc:
            if isinstance(exc, ModelLoadError):
                raise
            raise ModelLoadError(f"cannot read {file}: {exc}") from exc

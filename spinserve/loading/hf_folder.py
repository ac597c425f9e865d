"""Hugging Face folders: config.json + *.safetensors (+ tokenizer files)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from spinserve.config.model import ModelConfig
from spinserve.types.errors import ModelLoadError


def read_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{folder} has no config.json; is it a Hugging Face model folder?")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    try:
        return ModelConfig.from_hf_dict(hf)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc


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
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, ModelLoadError):
                raise
            raise ModelLoadError(f"cannot read {file}: {exc}") from exc

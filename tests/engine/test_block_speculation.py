"""The invariant on our k-quant kernel: a Q4_K_M-like target (Q4_K and Q6_K blocks, int8-rounded
activations) gives the same greedy tokens with speculation as alone, for every drafter kind,
k and batch size: a verification's rows are the same bits as the decodes they replace."""

from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType
from tiny_models import write_zoo_folder

from spinserve.config.engine import RuntimeConfig
from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import SpecParams, SpeculativeConfig
from spinserve.engine.builder import build_engine
from spinserve.engine.engine import LLMEngine
from spinserve.loading.loader import load
from spinserve.ops.blocks import BlockWeight
from spinserve.speculative.model_drafter import ModelDrafter
from spinserve.speculative.registry import build_drafter

PROMPTS = [list(range(10, 10 + n)) for n in (3, 17, 1, 9, 30, 5, 12, 24)]
PROMPTS[5] = [40, 41, 42, 43] * 6
PROMPTS[6] = [50, 51, 52] * 5
GREEDY = SamplingParams(max_tokens=16, ignore_eos=True)
DRAFTERS = ("self", "ngram", "suffix")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LLMEngine:
    folder = write_zoo_folder("qwen2", tmp_path_factory.mktemp("kquant"), GGMLQuantizationType.Q4_K)
    target = load(str(folder))
    assert isinstance(target.model.model.layers[0].mlp.up_proj.quantized, BlockWeight)
    # The target's own weights as a drafter (in the drafters' int8 form): most drafts are
    # accepted, so verifications of many rows are compared against single-row decodes.
    own = load(str(folder), RuntimeConfig(weights="int8"))
    config = SpeculativeConfig(drafter_kv_cache_gib=0.01)
    drafters = {
        "self": ModelDrafter(
            "self", own, target.tokenizer, target.config.vocab_size, config.drafter_kv_cache_gib
        ),
        "ngram": build_drafter("ngram", target, config),
        "suffix": build_drafter("suffix", target, config),
    }
    return build_engine(target, drafters=drafters)


@pytest.fixture(scope="module")
def expected(engine) -> list[list[int]]:
    return [engine.generate([p], GREEDY, SpecParams(drafter="none"))[0].token_ids for p in PROMPTS]


@pytest.mark.parametrize("drafter", DRAFTERS)
@pytest.mark.parametrize(("batch_size", "k"), [(1, 4), (4, 2), (8, 7)])
def test_greedy_with_speculation_equals_target_alone(engine, expected, drafter, batch_size, k):
    spec = SpecParams(drafter=drafter, num_draft_tokens=k)
    outs = engine.generate(PROMPTS[:batch_size], GREEDY, spec)
    assert [o.token_ids for o in outs] == expected[:batch_size]
    if drafter == "self" and k > 1:
        accepted = sum(o.spec_stats.num_accepted_tokens for o in outs)
        assert accepted > batch_size  # verifications had several rows

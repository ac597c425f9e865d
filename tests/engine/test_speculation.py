"""The invariant: greedy output with speculation equals greedy output of the target alone,
token for token, for every drafter kind, k, batch size and schedule."""

from __future__ import annotations

import pytest
import torch

from spinserve.config.engine import CacheConfig, EngineConfig, SchedulerConfig
from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import SpecParams, SpeculativeConfig
from spinserve.engine.builder import build_engine
from spinserve.engine.engine import LLMEngine
from spinserve.speculative.draft_model import DraftModel
from spinserve.speculative.model_drafter import ModelDrafter
from spinserve.speculative.registry import build_drafter
from spinserve.types.errors import InvalidRequestError, ModelLoadError

PROMPTS = [list(range(10, 10 + n)) for n in (3, 17, 1, 9, 30, 5, 12, 24)]
# Repetitive prompts give the model-free drafters matches to propose.
PROMPTS[5] = [40, 41, 42, 43] * 6
PROMPTS[6] = [50, 51, 52] * 5
GREEDY = SamplingParams(max_tokens=16, ignore_eos=True)
DRAFTERS = ("same", "same32", "other", "cross", "ngram", "suffix")


@pytest.fixture(scope="module")
def engine(tiny_loaded, tiny_drafters) -> LLMEngine:
    target = tiny_loaded["llama"]
    config = SpeculativeConfig(drafter_kv_cache_gib=0.01)
    drafters = {
        name: build_drafter(name if name in ("ngram", "suffix") else "", target, config)
        if name in ("ngram", "suffix")
        else _wrap(name, tiny_drafters[name.removesuffix("32")], target, config)
        for name in DRAFTERS
    }
    return build_engine(target, drafters=drafters)


def _wrap(name, drafter, target, config):
    from spinserve.speculative.cross_tokenizer import CrossTokenizerDrafter

    if name == "cross":
        return CrossTokenizerDrafter(name, drafter, target.tokenizer, config.drafter_kv_cache_gib)
    # "same32": the same drafter with its cache in its compute dtype instead of float16
    dtype = "auto" if name == "same32" else config.drafter_kv_cache_dtype
    return ModelDrafter(
        name, drafter, target.tokenizer, target.config.vocab_size, config.drafter_kv_cache_gib,
        dtype,
    )  # fmt: skip


@pytest.fixture(scope="module")
def expected(engine) -> list[list[int]]:
    """Target alone, no speculation, one request at a time."""
    return [engine.generate([p], GREEDY, SpecParams(drafter="none"))[0].token_ids for p in PROMPTS]


@pytest.mark.parametrize("drafter", DRAFTERS)
@pytest.mark.parametrize(("batch_size", "k"), [(1, 4), (4, 1), (8, 3)])
def test_greedy_with_speculation_equals_target_alone(engine, expected, drafter, batch_size, k):
    spec = SpecParams(drafter=drafter, num_draft_tokens=k)
    outs = engine.generate(PROMPTS[:batch_size], GREEDY, spec)
    assert [o.token_ids for o in outs] == expected[:batch_size]
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_mixed_drafters_and_k_joining_mid_run(engine, expected):
    """Requests with different drafters and k share batches; they arrive while others
    decode; prefill is chunked by a small token budget that also cuts drafts short."""
    engine.scheduler.config = SchedulerConfig(max_num_batched_tokens=6, max_num_seqs=4)
    try:
        pending = [
            (i, SpecParams(drafter=DRAFTERS[i % len(DRAFTERS)], num_draft_tokens=1 + i % 4))
            for i in range(len(PROMPTS))
        ]
        names: dict[str, int] = {}
        results: dict[int, list[int]] = {}
        step = 0
        while pending or engine.has_unfinished():
            if pending and step % 2 == 0:
                i, spec = pending.pop(0)
                names[engine.add_request(PROMPTS[i], GREEDY, spec=spec)] = i
            for out in engine.step():
                if out.finished:
                    results[names[out.request_id]] = out.token_ids
            step += 1
    finally:
        engine.scheduler.config = SchedulerConfig()
    assert results == dict(enumerate(expected))


def test_a_perfect_drafter_is_always_accepted(engine, expected):
    out = engine.generate([PROMPTS[1]], GREEDY, SpecParams(drafter="same", num_draft_tokens=4))[0]
    stats = out.spec_stats
    assert out.token_ids == expected[1]
    assert stats.acceptance_rate == 1.0
    # 16 tokens: the first comes from the prefill, then 3 steps of 4 accepted + 1 bonus.
    assert stats.num_draft_steps == 3 and stats.mean_accepted_length == 5.0
    assert stats.acceptance_by_position == [1.0, 1.0, 1.0, 1.0]


def test_preemption_with_drafts(tiny_loaded, tiny_drafters, expected):
    target = tiny_loaded["llama"]
    per_token = target.config.kv_bytes_per_token(4)
    cache = CacheConfig(block_size=4, kv_cache_gib=14 * 4 * per_token / 2**30)
    drafters = {"same": _wrap("same", tiny_drafters["same"], target, SpeculativeConfig())}
    engine = build_engine(target, EngineConfig(cache=cache), drafters=drafters)
    outs = engine.generate(PROMPTS, GREEDY, SpecParams(drafter="same", num_draft_tokens=4))
    assert [o.token_ids for o in outs] == expected


def test_stop_token_inside_accepted_drafts(engine, expected):
    target = expected[1]
    stop = target[6]
    params = SamplingParams(max_tokens=16, stop_token_ids=(stop,))
    out = engine.generate([PROMPTS[1]], params, SpecParams(drafter="same", num_draft_tokens=4))[0]
    assert out.token_ids == target[: target.index(stop) + 1]


def test_seeded_sampling_with_speculation_is_reproducible(engine):
    params = SamplingParams(max_tokens=12, temperature=0.8, seed=11)
    spec = SpecParams(drafter="same", num_draft_tokens=3)
    first = engine.generate([PROMPTS[3]], params, spec)[0].token_ids
    again = engine.generate([PROMPTS[0], PROMPTS[3]], [params, params], spec)[1].token_ids
    assert first == again and len(first) == 12


def test_unknown_drafter_is_a_clear_error(engine):
    with pytest.raises(InvalidRequestError, match="unknown drafter 'nope'; loaded drafters: same"):
        engine.add_request(PROMPTS[0], GREEDY, spec=SpecParams(drafter="nope"))


def test_same_tokenizer_drafter_with_another_vocabulary_is_refused(tiny_loaded, tiny_drafters):
    target = tiny_loaded["llama"]
    with pytest.raises(ModelLoadError, match="does not share the target's vocabulary"):
        ModelDrafter("cross", tiny_drafters["cross"], target.tokenizer, 264, 0.01)


def test_registry_detects_the_drafter_kind(tiny_loaded, tiny_folders, tmp_path):
    from tiny_models import write_hf_folder

    target = tiny_loaded["llama"]
    config = SpeculativeConfig(drafter_kv_cache_gib=0.01)
    same = build_drafter(str(tiny_folders["qwen2"]), target, config)
    cross = build_drafter(
        str(write_hf_folder("llama", tmp_path / "c", specials_first=True)), target, config
    )
    assert type(same).__name__ == "ModelDrafter"
    assert type(cross).__name__ == "CrossTokenizerDrafter"
    assert type(build_drafter("ngram", target, config)).__name__ == "NgramDrafter"


def test_draft_probabilities_reach_verification(engine):
    """A sampled request with a model drafter carries the drafter's distributions."""
    engine.add_request(
        PROMPTS[1],
        SamplingParams(max_tokens=3, temperature=1.0, seed=1),
        spec=SpecParams(drafter="other", num_draft_tokens=2),
    )
    engine.step()  # prefill
    (request,) = engine.scheduler.running
    proposal = engine.speculator.propose(engine.scheduler.running, 0)[request.request_id]
    n = len(proposal.draft)  # k = 2, cut to the 1 token max_tokens leaves room for
    assert proposal.drafter == "other" and n == 1
    probs = proposal.draft.probs
    assert probs is not None and probs.shape == (n, 264)
    torch.testing.assert_close(probs.sum(-1), torch.ones(n))
    engine.abort(request.request_id)


@pytest.mark.parametrize(
    "policy", ["spin", "random", "round-robin", "fixed:same", "fixed:ngram", "fixed:none"]
)
def test_every_selection_policy_keeps_greedy_output(tiny_loaded, tiny_drafters, expected, policy):
    """Requests that leave the drafter to the policy: it may switch drafter and k every step;
    the output is still the target's."""
    from spinserve.config.selection import SelectionConfig

    target = tiny_loaded["llama"]
    config = SpeculativeConfig(drafter_kv_cache_gib=0.01)
    drafters = {
        "same": _wrap("same", tiny_drafters["same"], target, config),
        "other": _wrap("other", tiny_drafters["other"], target, config),
        "ngram": build_drafter("ngram", target, config),
    }
    engine = build_engine(
        target, EngineConfig(selection=SelectionConfig(policy=policy)), drafters=drafters
    )
    outs = engine.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outs] == expected
    chosen = engine.choice_summary()
    assert sum(chosen.values()) > 0
    if policy == "fixed:none":
        assert set(chosen) == {"none"}
    if policy == "spin":  # it explores: more than one arm is tried
        assert len({label.split("@")[0] for label in chosen}) > 1
    assert all(o.choice_counts for o in outs)


def test_spin_with_the_step_gate_keeps_greedy_output(tiny_loaded, tiny_drafters, expected):
    from spinserve.config.selection import SelectionConfig

    target = tiny_loaded["llama"]
    config = SpeculativeConfig(drafter_kv_cache_gib=0.01)
    drafters = {
        "same": _wrap("same", tiny_drafters["same"], target, config),
        "ngram": build_drafter("ngram", target, config),
    }
    selection = SelectionConfig(policy="spin", step_gate=True)
    engine = build_engine(target, EngineConfig(selection=selection), drafters=drafters)
    assert [o.token_ids for o in engine.generate(PROMPTS, GREEDY)] == expected
    assert engine.drafter_stats["ngram"].draft_seconds > 0  # the lookup drafted every step


def test_spin_starts_with_each_drafters_catchup_measured(tiny_loaded, tiny_drafters, monkeypatch):
    """At start every drafter drafts one token after scratch sequences of 1 and 64 tokens it
    has not seen (the slope is its catch-up per token: a model drafter's prefill), and the
    scratch sequences leave nothing behind: the model drafters' pools are free again and the
    suffix drafter learned nothing from them."""
    from spinserve.selection.policy import CALIBRATION_DRAFT_TOKENS
    from spinserve.selection.spin import SpinPolicy

    calls = []
    monkeypatch.setattr(SpinPolicy, "calibrate", lambda self, *args: calls.append(args))
    target = tiny_loaded["llama"]
    config = SpeculativeConfig(drafter_kv_cache_gib=0.01)
    drafters = {
        "same": _wrap("same", tiny_drafters["same"], target, config),
        "cross": _wrap("cross", tiny_drafters["cross"], target, config),
        "suffix": build_drafter("suffix", target, config),
    }
    engine = build_engine(target, drafters=drafters)
    [(steps, draft_timings)] = calls
    assert [s.num_batched_tokens for s in steps] == [1, 3, 5, 9]
    assert sorted((t.drafter, t.num_tokens) for t in draft_timings) == sorted(
        (name, n) for name in drafters for n in CALIBRATION_DRAFT_TOKENS
    )
    assert all(t.seconds > 0 for t in draft_timings)
    assert drafters["suffix"].num_sequences == 0 and drafters["suffix"].num_requests == 0
    for name in ("same", "cross"):
        pool = drafters[name]._model.blocks
        assert pool.num_free_blocks == pool.num_blocks, name
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_a_model_drafters_cache_is_float16_with_twice_the_tokens(tiny_drafters):
    """`--drafter-kv-cache-dtype` (float16 by default): the drafter's pool holds its keys and
    values in float16, twice the tokens of its compute dtype in the same GiB."""
    model = tiny_drafters["same"].model
    half = DraftModel(model, 0.01, kv_cache_dtype=SpeculativeConfig().drafter_kv_cache_dtype)
    full = DraftModel(model, 0.01)
    assert half.runner.kv_cache.k[0].dtype == torch.float16
    assert full.runner.kv_cache.k[0].dtype == model.dtype == torch.float32
    assert half.blocks.num_blocks in (2 * full.blocks.num_blocks, 2 * full.blocks.num_blocks + 1)

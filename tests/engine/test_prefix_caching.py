"""Prefix caching is exact: a request served from cached blocks gives the same logits and
tokens as the same request computed from scratch, for every drafter, sampling mode, chunk split
and block size, and no request writes into a block another one holds.

The models run with bfloat16 weights: that path (like the GGUF kernels real models use) gives
each row the same bits whatever else is in the forward. Dense fp32 weights, the reference
path, go through torch's batched matmul, whose last bits depend on the row count.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from spinserve.config.engine import CacheConfig, EngineConfig, RuntimeConfig, SchedulerConfig
from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import SpecParams, SpeculativeConfig
from spinserve.engine.builder import build_engine
from spinserve.engine.engine import LLMEngine
from spinserve.loading.loader import LoadedModel, load
from spinserve.speculative.cross_tokenizer import CrossTokenizerDrafter
from spinserve.speculative.draft_model import DraftJob, DraftModel
from spinserve.speculative.model_drafter import ModelDrafter
from spinserve.speculative.registry import MODEL_FREE

GREEDY = SamplingParams(max_tokens=32, ignore_eos=True)
SEEDED = SamplingParams(max_tokens=32, ignore_eos=True, temperature=0.8, seed=3)
_rng = random.Random(0)
# A "document" with repeats (so the lookups find matches) and questions about it.
DOC = [_rng.randrange(10, 250) for _ in range(13)] * 3 + [_rng.randrange(10, 250) for _ in range(7)]
QUESTIONS = [[_rng.randrange(10, 250) for _ in range(n)] for n in (3, 9, 5)]


@pytest.fixture(scope="module")
def exact(tiny_folders, tiny_drafters) -> dict[str, LoadedModel]:
    """The llama target and its drafters with bfloat16 weights (batch-invariant rows)."""
    bf16 = RuntimeConfig(weights="bfloat16")
    models = {name: load(m.name, bf16) for name, m in tiny_drafters.items()}
    models["target"] = load(str(tiny_folders["llama"]), bf16)
    return models


def make_engine(exact, drafter: str, caching: bool, **cache) -> LLMEngine:
    target = exact["target"]
    cache_config = CacheConfig(prefix_caching=caching, **cache)
    config = EngineConfig(cache=cache_config, scheduler=SchedulerConfig(max_num_batched_tokens=48))
    drafters = {}
    gib = SpeculativeConfig(drafter_kv_cache_gib=0.01).drafter_kv_cache_gib
    if drafter in MODEL_FREE:
        drafters[drafter] = MODEL_FREE[drafter]()
    elif drafter == "same":
        vocab = target.config.vocab_size
        drafters[drafter] = ModelDrafter(
            "same", exact["same"], target.tokenizer, vocab, gib, prefix_caching=caching
        )
    elif drafter == "cross":
        drafters[drafter] = CrossTokenizerDrafter(
            "cross", exact["cross"], target.tokenizer, gib, prefix_caching=caching
        )
    return build_engine(target, config, drafters=drafters)


def conversation(engine: LLMEngine, params: SamplingParams, spec: SpecParams) -> list[list[int]]:
    """Three questions on one document at once, then each one's second turn (the first turn,
    its answer and a follow-up), one after another."""
    first = engine.generate([DOC + q for q in QUESTIONS], params, spec)
    outputs = [o.token_ids for o in first]
    for q, out in zip(QUESTIONS, first, strict=True):
        [second] = engine.generate([DOC + q + out.token_ids + [7, 8, 9]], params, spec)
        outputs.append(second.token_ids)
        assert second.num_cached_tokens <= second.num_prompt_tokens
    return outputs


def batch_sizes(runner) -> list[int]:
    """From now on, the token count of every batch ``runner`` executes."""
    sizes: list[int] = []
    original = runner.execute

    def counting(batch):
        sizes.append(batch.num_tokens)
        return original(batch)

    runner.execute = counting
    return sizes


class KVWatch:
    """Checks after every step that a registered block's keys and values never change."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.seen: dict[tuple[int, bytes], torch.Tensor] = {}

    def check(self) -> None:
        kv = self.engine.runner.kv_cache
        bs = kv.block_size
        for block, h in self.engine.blocks.registered_blocks().items():
            content = torch.cat([t[block * bs : (block + 1) * bs] for t in kv.k + kv.v])
            old = self.seen.setdefault((block, h), content.clone())
            assert torch.equal(old, content), f"registered block {block} was written"


# A sampled request's tokens depend on the drafts it was offered (rejection sampling draws
# differently for different drafts), and the suffix drafter's drafts on what other requests
# finished before: any change of schedule, cached or not, changes them. So seeded sampling is
# compared for the drafters whose drafts depend on the request alone.
CASES = [("greedy", d) for d in ("none", "ngram", "suffix", "same", "cross")] + [
    ("seeded", d) for d in ("none", "ngram", "same")
]


@pytest.mark.parametrize(("mode", "drafter"), CASES)
def test_outputs_identical_with_caching_on_and_off(exact, mode, drafter):
    params = GREEDY if mode == "greedy" else SEEDED
    spec = SpecParams(drafter=drafter, num_draft_tokens=None if drafter == "none" else 3)
    off = make_engine(exact, drafter, caching=False)
    on = make_engine(exact, drafter, caching=True)
    assert conversation(on, params, spec) == conversation(off, params, spec)
    # the second turns found their first turn (and the document) cached
    assert on.prefix_cache_stats.hits >= 3 * 3 * 16
    assert off.prefix_cache_stats.hits == off.prefix_cache_stats.queries == 0
    if drafter != "none":  # it drafted; "same" (the target itself) is always accepted
        stats = on.drafter_stats[drafter]
        assert stats.num_draft_tokens > 0
        assert stats.num_accepted_tokens > 0 or drafter != "same"
    assert on.blocks.num_free_blocks == on.blocks.num_blocks


@pytest.mark.parametrize(("block_size", "budget"), [(4, 5), (4, 64), (16, 7), (16, 256)])
def test_exact_across_block_sizes_and_chunk_splits(tiny_folders, arch, block_size, budget):
    """Every architecture (Gemma's sliding layers included), prefills cut anywhere."""
    target = load(str(tiny_folders[arch]), RuntimeConfig(weights="bfloat16"))

    def run(caching: bool) -> list[list[int]]:
        config = EngineConfig(
            cache=CacheConfig(block_size=block_size, prefix_caching=caching),
            scheduler=SchedulerConfig(max_num_batched_tokens=budget),
        )
        return conversation(build_engine(target, config), GREEDY, SpecParams())

    assert run(True) == run(False)


def test_second_turn_computes_only_its_new_tokens(exact):
    engine = make_engine(exact, "none", caching=True, block_size=4)
    [first] = engine.generate([DOC], GREEDY)
    assert first.num_cached_tokens == 0
    follow_up = DOC + first.token_ids + [1, 2, 3]
    computed = batch_sizes(engine.runner)
    [second] = engine.generate([follow_up], GREEDY)
    # the first turn's prompt and its computed output blocks (all but the last token) reused
    reusable = (len(DOC) + len(first.token_ids) - 1) // 4 * 4
    assert second.num_cached_tokens == reusable
    assert computed[0] == len(follow_up) - reusable
    stats = engine.prefix_cache_stats
    assert (stats.queries, stats.hits) == (len(DOC) + len(follow_up), reusable)


def test_no_registered_block_is_ever_written(exact):
    """Speculation rolls back inside shared prefixes' neighbours, requests join mid-run and
    a small pool preempts: registered blocks keep their bits throughout."""
    target = exact["target"]
    per_token = target.config.kv_bytes_per_token(4)
    engine = make_engine(
        exact, "same", caching=True, block_size=4,
        kv_cache_gib=40 * 4 * per_token / 2**30,
    )  # fmt: skip
    watch = KVWatch(engine)
    spec = SpecParams(drafter="same", num_draft_tokens=3)
    prompts = [DOC + q for q in QUESTIONS] * 2
    pending = list(prompts)
    finished = {}
    while pending or engine.has_unfinished():
        if pending:
            engine.add_request(pending.pop(), GREEDY, spec=spec)
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        watch.check()
    assert len(watch.seen) > 0
    assert sum(o.num_cached_tokens for o in finished.values()) > 0
    reference = make_engine(exact, "none", caching=False)
    expected = {tuple(o.token_ids) for o in reference.generate(prompts, GREEDY)}
    assert {tuple(o.token_ids) for o in finished.values()} == expected


def test_preempted_requests_come_back_through_the_cache(exact):
    target = exact["target"]
    per_token = target.config.kv_bytes_per_token(4)
    small = dict(block_size=4, kv_cache_gib=30 * 4 * per_token / 2**30)
    on = make_engine(exact, "none", caching=True, **small)
    off = make_engine(exact, "none", caching=False, **small)
    prompts = [DOC + q for q in QUESTIONS]
    params = replace(GREEDY, max_tokens=24)
    outs_on = on.generate(prompts, params)
    assert [o.token_ids for o in outs_on] == [o.token_ids for o in off.generate(prompts, params)]
    assert on.blocks.num_free_blocks == on.blocks.num_blocks


def test_a_drafters_pool_starts_a_new_sequence_from_its_cached_prefix(exact):
    model = exact["same"].model
    on, off = DraftModel(model, 0.01, block_size=4), DraftModel(model, 0.01, prefix_caching=False)
    job = DraftJob("a", DOC, 4, GREEDY)
    assert on.draft([job])[0].token_ids == off.draft([job])[0].token_ids
    on.release("a")
    second = DraftJob("b", [*DOC, 5, 6, 7], 4, GREEDY)
    fed = batch_sizes(on.runner)
    assert on.draft([second])[0].token_ids == off.draft([second])[0].token_ids
    # the first round fed only what the first sequence's confirmed blocks did not hold
    assert fed[0] == len(second.token_ids) - (len(DOC) - 1) // 4 * 4


def test_a_drafter_rolling_back_into_a_registered_block_lets_it_go(exact):
    model = exact["same"].model
    on, off = DraftModel(model, 0.01, block_size=4), DraftModel(model, 0.01, prefix_caching=False)
    for tokens in (DOC, DOC, [*DOC[:-6], 1, 2, 3], [*DOC, 4]):  # the third cuts into blocks
        job = DraftJob("a", tokens, 3, GREEDY)
        assert on.draft([job])[0].token_ids == off.draft([job])[0].token_ids
    other = DraftJob("b", [*DOC, 4], 3, GREEDY)
    assert on.draft([other])[0].token_ids == off.draft([other])[0].token_ids


def test_a_cached_prefix_gives_bit_identical_logits(exact):
    """The logits of a prompt served from cached blocks equal those computed from scratch."""

    def first_logits(engine: LLMEngine, prompt: list[int]) -> torch.Tensor:
        rows = []
        original = engine.runner.execute

        def keep(batch):
            logits = original(batch)
            rows.append(logits.clone())
            return logits

        engine.runner.execute = keep
        engine.generate([prompt], replace(GREEDY, max_tokens=1))
        engine.runner.execute = original
        return rows[-1]

    on = make_engine(exact, "none", caching=True, block_size=4)
    on.generate([DOC + QUESTIONS[0]], GREEDY)
    prompt = DOC + QUESTIONS[1]
    cached = first_logits(on, prompt)
    assert on.prefix_cache_stats.hits == len(DOC) // 4 * 4
    fresh = first_logits(make_engine(exact, "none", caching=False, block_size=4), prompt)
    assert torch.equal(cached, fresh)


def test_a_request_waits_a_step_rather_than_compute_a_block_in_flight():
    """Two questions on one document arrive together: the second is admitted once the first
    has computed the document, and takes it from the cache; an unrelated one is not held."""
    from spinserve.engine.request import Request
    from spinserve.engine.scheduler import Scheduler
    from spinserve.runtime.block_manager import BlockManager

    blocks = BlockManager(64, 4, prefix_caching=True)
    scheduler = Scheduler(SchedulerConfig(max_num_batched_tokens=256), blocks)
    first, second, other = (
        Request(name, prompt, GREEDY)
        for name, prompt in (
            ("first", DOC + QUESTIONS[0]),
            ("second", DOC + QUESTIONS[1]),
            ("other", QUESTIONS[2] * 4),
        )
    )
    for request in (first, second, other):
        scheduler.add(request)
    batch = scheduler.schedule()
    assert [c.request_id for c in batch.chunks] == ["first", "other"]
    scheduler.update(batch)
    for request in (first, other):
        request.append_output(1)
    batch = scheduler.schedule()
    assert [c.request_id for c in batch.chunks] == ["first", "other", "second"]
    assert second.num_cached_tokens == len(DOC) // 4 * 4
    assert batch.chunks[-1].start_pos == len(DOC) // 4 * 4


def test_the_suffix_drafter_drafts_from_a_conversations_earlier_turns():
    """A second turn's prompt holds the first turn's answer; when the reply starts to repeat
    it, the suffix drafter proposes the rest of it (the request indexes its own prompt)."""
    from spinserve.speculative.drafter import DraftRequest
    from spinserve.speculative.suffix import SuffixDrafter

    answer = [_rng.randrange(10, 250) for _ in range(20)]
    turn2 = DOC + QUESTIONS[0] + answer + [7, 8, 9] + answer[:6]
    [draft] = SuffixDrafter().propose([DraftRequest("turn2", turn2, 5, GREEDY)])
    assert draft.token_ids == answer[6:11]

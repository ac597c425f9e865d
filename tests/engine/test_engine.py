"""The engine end to end on tiny models: continuous batching must not change any output."""

from __future__ import annotations

import pytest
import torch

from spinserve.config.engine import CacheConfig, EngineConfig, SchedulerConfig
from spinserve.config.sampling import GREEDY_BELOW, SamplingParams
from spinserve.config.speculative import SpecParams
from spinserve.engine.builder import build_engine
from spinserve.runtime.backend import ModelBackend
from spinserve.speculative.ngram import NgramDrafter
from spinserve.types.errors import InvalidRequestError

PROMPTS = [list(range(10, 10 + n)) for n in (3, 17, 1, 9, 30, 5, 12, 24)]


def reference_greedy(ref: torch.nn.Module, prompt: list[int], num_tokens: int) -> list[int]:
    """Plain greedy decoding with the transformers model, no cache: the ground truth."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(num_tokens):
            ids.append(int(ref(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.fixture(scope="module")
def expected(tiny_refs) -> dict[str, list[list[int]]]:
    return {
        arch: [reference_greedy(ref, p, 12) for p in PROMPTS] for arch, ref in tiny_refs.items()
    }


GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_greedy_batched_equals_reference(arch, tiny_loaded, expected, batch_size):
    engine = build_engine(tiny_loaded[arch])
    prompts = PROMPTS[:batch_size]
    outs = engine.generate(prompts, GREEDY)
    assert [o.token_ids for o in outs] == expected[arch][:batch_size]
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_requests_join_and_leave_mid_run(arch, tiny_loaded, expected):
    """Chunked prefill (5-token budget) with requests arriving while others decode."""
    config = EngineConfig(scheduler=SchedulerConfig(max_num_batched_tokens=5, max_num_seqs=3))
    engine = build_engine(tiny_loaded[arch], config)
    pending = list(enumerate(PROMPTS))
    results: dict[str, list[int]] = {}
    names: dict[str, int] = {}
    step = 0
    while pending or engine.has_unfinished():
        if pending and step % 3 == 0:
            i, prompt = pending.pop(0)
            names[engine.add_request(prompt, GREEDY)] = i
        for out in engine.step():
            if out.finished:
                results[out.request_id] = out.token_ids
        step += 1
    assert {names[r]: ids for r, ids in results.items()} == dict(enumerate(expected[arch]))


def test_preemption_keeps_outputs(tiny_loaded, expected):
    """A pool of 12 blocks of 4 tokens cannot hold 8 requests: some are preempted and
    recomputed, and every output is still exact."""
    loaded = tiny_loaded["llama"]
    per_token = loaded.config.kv_bytes_per_token(4)
    cache = CacheConfig(block_size=4, kv_cache_gib=12 * 4 * per_token / 2**30)
    engine = build_engine(loaded, EngineConfig(cache=cache))
    assert engine.blocks.num_blocks == 12
    ids = [engine.add_request(p, GREEDY) for p in PROMPTS]
    preempted = 0
    finals = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out.token_ids
        preempted = max(preempted, sum(r.num_preemptions for r in engine.scheduler.waiting))
    assert preempted > 0
    assert [finals[i] for i in ids] == expected["llama"]


def test_seeded_sampling_is_independent_of_the_batch(tiny_loaded):
    engine = build_engine(tiny_loaded["qwen2"])
    params = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, top_k=40, seed=123)
    alone = engine.generate([PROMPTS[1]], params)[0].token_ids
    others = SamplingParams(max_tokens=7, temperature=1.0, seed=5)
    batched = engine.generate([PROMPTS[0], PROMPTS[1], PROMPTS[2]], [others, params, others])
    assert batched[1].token_ids == alone
    reseeded = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, top_k=40, seed=124)
    assert engine.generate([PROMPTS[1]], reseeded)[0].token_ids != alone


def test_a_vanishing_temperature_is_greedy(tiny_loaded):
    """1e-272 is > 0 but divides logits into inf (found by the server's fuzz test: the
    step failed on NaN probabilities); below `GREEDY_BELOW` a request is greedy."""
    engine = build_engine(tiny_loaded["llama"], drafters={"ngram": NgramDrafter()})
    tiny = SamplingParams(max_tokens=8, temperature=1e-272, seed=3)
    assert tiny.greedy and not SamplingParams(temperature=GREEDY_BELOW).greedy
    spec = SpecParams(drafter="ngram", num_draft_tokens=3)
    out = engine.generate([PROMPTS[0]], tiny, spec)[0].token_ids
    assert out == engine.generate([PROMPTS[0]], SamplingParams(max_tokens=8))[0].token_ids


def test_stop_string_truncates_text(tiny_loaded):
    engine = build_engine(tiny_loaded["llama"])
    full = engine.generate([PROMPTS[3]], GREEDY)[0]
    # Pick a stop string from the middle of what greedy decoding writes.
    text = full.text
    stop = next(text[i : i + 2] for i in range(3, len(text) - 2) if text[i : i + 2].isprintable())
    out = engine.generate(
        [PROMPTS[3]], SamplingParams(max_tokens=12, ignore_eos=True, stop=(stop,))
    )[0]
    assert out.finish_reason == "stop"
    assert out.text == text[: text.index(stop)]


def test_streamed_deltas_add_up_to_the_text(tiny_loaded):
    engine = build_engine(tiny_loaded["gemma3"])
    rid = engine.add_request(
        PROMPTS[4], SamplingParams(max_tokens=20, ignore_eos=True, stop=("zz",))
    )
    pieces, final = [], None
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id == rid
            pieces.append(out.new_text)
            final = out
    assert final is not None and final.finished
    assert "".join(pieces) == final.text


def test_stop_token_ids_and_max_tokens(tiny_loaded, expected):
    engine = build_engine(tiny_loaded["llama"])
    target = expected["llama"][0]
    out = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=12, stop_token_ids=(target[4],)))[
        0
    ]
    assert out.token_ids == target[: target.index(target[4]) + 1]
    assert out.finish_reason == "stop"
    out = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=3, ignore_eos=True))[0]
    assert out.token_ids == target[:3] and out.finish_reason == "length"


def test_context_length_limits(tiny_loaded):
    config = EngineConfig(scheduler=SchedulerConfig(max_model_len=20))
    engine = build_engine(tiny_loaded["llama"], config)
    with pytest.raises(
        InvalidRequestError, match="the prompt has 20 tokens but the context holds 20"
    ):
        engine.add_request(list(range(20)))
    out = engine.generate([list(range(15))], SamplingParams(max_tokens=50, ignore_eos=True))[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [([], "the prompt is empty"), ([1, 99999], "outside the vocabulary")],
)
def test_bad_prompts(tiny_loaded, prompt, message):
    engine = build_engine(tiny_loaded["llama"])
    with pytest.raises(InvalidRequestError, match=message):
        engine.add_request(prompt)


def test_abort_frees_blocks(tiny_loaded):
    engine = build_engine(tiny_loaded["llama"])
    rid = engine.add_request(PROMPTS[4], GREEDY)
    engine.step()
    assert engine.blocks.num_free_blocks < engine.blocks.num_blocks
    out = engine.abort(rid)
    assert out is not None and out.finish_reason == "abort"
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    assert not engine.has_unfinished()
    assert engine.abort(rid) is None


class _RecordingBackend:
    """The real torch runner, with the `release` calls it receives written down."""

    def __init__(self, inner: ModelBackend) -> None:
        self.inner = inner
        self.released: list[str] = []
        self.start_positions: list[tuple[str, int]] = []

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    def execute(self, batch):
        self.start_positions += [(c.request_id, c.start_pos) for c in batch.chunks]
        return self.inner.execute(batch)

    def release(self, request_id: str) -> None:
        self.released.append(request_id)
        self.inner.release(request_id)


def test_engine_uses_its_model_only_through_the_backend_contract(tiny_loaded, expected):
    """The torch runner satisfies `ModelBackend`; the engine releases every finished or
    aborted request, and a preempted request comes back at position 0 (the truncation the
    contract implies; without prefix caching, which would resume it from its cached blocks),
    with outputs unchanged."""
    loaded = tiny_loaded["llama"]
    per_token = loaded.config.kv_bytes_per_token(4)
    cache = CacheConfig(  # preempts
        block_size=4, kv_cache_gib=12 * 4 * per_token / 2**30, prefix_caching=False
    )
    engine = build_engine(loaded, EngineConfig(cache=cache))
    assert isinstance(engine.runner, ModelBackend)
    backend = engine.runner = _RecordingBackend(engine.runner)
    outs = engine.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outs] == expected["llama"]
    assert sorted(backend.released) == sorted(o.request_id for o in outs)
    restarted = {
        rid
        for i, (rid, pos) in enumerate(backend.start_positions)
        if pos == 0 and any(r == rid and p > 0 for r, p in backend.start_positions[:i])
    }
    assert restarted, "the pool was meant to force a preemption"
    rid = engine.add_request(PROMPTS[4], GREEDY)
    engine.step()
    engine.abort(rid)
    assert backend.released[-1] == rid


def test_spin_starts_with_the_target_step_costs_measured(tiny_loaded):
    """A policy that prices drafts by the forward's cost line gets it measured at start
    (forwards of 1, 3, 5 and 9 tokens); the blocks it used are free again, and the first
    request's output is unaffected."""
    from spinserve.config.speculative import SpeculativeConfig
    from spinserve.selection.policy import CALIBRATION_TOKENS
    from spinserve.selection.spin import SpinPolicy

    config = EngineConfig(speculative=SpeculativeConfig(drafters=("ngram",)))
    engine = build_engine(tiny_loaded["llama"], config)
    assert isinstance(engine.policy, SpinPolicy)
    forward = engine.policy.shared.forward
    assert forward.known and forward.coefficients[1] >= 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    alone = build_engine(tiny_loaded["llama"])  # no drafters: nothing to calibrate
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    prompt = list(range(10, 30))
    assert engine.generate([prompt], params)[0].token_ids == (
        alone.generate([prompt], params)[0].token_ids
    )
    assert max(CALIBRATION_TOKENS) <= engine.blocks.block_size * engine.blocks.num_blocks

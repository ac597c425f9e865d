"""One request's failure never touches another's.

Faults are injected where a request's own computation runs (a drafter that raises, stalls,
returns junk; sampling parameters that make verification raise; a detokenizer that raises;
a selection policy that raises): the faulty request (or drafter) fails alone, and every other
request's output is identical to the same request run without the fault.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import pytest

from spinserve.config.engine import EngineConfig
from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import SpecParams, SpeculativeConfig
from spinserve.engine.builder import build_engine
from spinserve.engine.drafter_guard import MAX_CONSECUTIVE_FAILURES
from spinserve.speculative.drafter import Draft
from spinserve.speculative.model_drafter import ModelDrafter
from spinserve.speculative.ngram import NgramDrafter

PROMPTS = [[40, 41, 42, 43] * 6, [50, 51, 52] * 5, list(range(10, 27)), [7, 8, 9]]
GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)
SEEDED = SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.8, seed=11)


class Raising:
    """Raises on every call after the first ``good_calls``."""

    def __init__(self, name: str = "raising", good_calls: int = 0) -> None:
        self.name, self.calls, self.good_calls = name, 0, good_calls

    def propose(self, requests):
        self.calls += 1
        if self.calls > self.good_calls:
            raise RuntimeError("injected drafter fault")
        return [Draft([]) for _ in requests]

    def finish(self, request_id, token_ids):
        pass


class Stalling:
    """Once armed, blocks on its next call until released (or 5 s)."""

    name = "stalling"

    def __init__(self) -> None:
        self.armed, self.release = False, threading.Event()

    def propose(self, requests):
        if self.armed:
            self.armed = False
            self.release.wait(5)
        return [Draft([]) for _ in requests]

    def finish(self, request_id, token_ids):
        pass


class Junk:
    """Proposes a token outside the vocabulary first, then the wrong number of drafts."""

    name = "junk"

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size, self.calls = vocab_size, 0

    def propose(self, requests):
        self.calls += 1
        if self.calls % 2:
            return [Draft([self.vocab_size + 5, 1]) for _ in requests]
        return [Draft([1])] * (len(requests) + 1)

    def finish(self, request_id, token_ids):
        pass


@pytest.fixture(scope="module")
def target(tiny_loaded):
    return tiny_loaded["llama"]


def _same(target):
    """The target as its own drafter: every draft passes (shows drafting really happened)."""
    return ModelDrafter("same", target, target.tokenizer, target.config.vocab_size, 0.01)


def _engine(target, drafters, timeout_s: float = 10.0):
    spec = SpeculativeConfig(draft_timeout_s=timeout_s)
    return build_engine(target, EngineConfig(speculative=spec), drafters=drafters)


@pytest.fixture(scope="module")
def expected(target) -> dict[str, list[list[int]]]:
    """Each prompt alone on the target, greedy and seeded."""
    engine = _engine(target, {})
    return {
        kind: [engine.generate([p], params)[0].token_ids for p in PROMPTS]
        for kind, params in (("greedy", GREEDY), ("seeded", SEEDED))
    }


def _run(engine, specs, params=GREEDY):
    outs = engine.generate(PROMPTS, params, [SpecParams(d) for d in specs])
    return [o.token_ids for o in outs], outs


def test_a_raising_drafter_costs_only_its_drafts(target, expected, caplog):
    engine = _engine(target, {"raising": Raising(), "same": _same(target)})
    with caplog.at_level(logging.WARNING, logger="spinserve.engine"):
        ids, outs = _run(engine, ["raising", "same", "raising", "none"])
    assert ids == expected["greedy"]
    assert all(o.finish_reason == "length" for o in outs)
    stats = engine.drafter_stats
    assert stats["same"].num_accepted_tokens > 0  # the good drafter drafted and was accepted
    assert stats["raising"].num_failed_calls == MAX_CONSECUTIVE_FAILURES
    assert engine.speculator.guards["raising"].disabled  # then left alone
    logged = [r.getMessage() for r in caplog.records]
    assert sum("disabled" in m for m in logged) == 1
    assert sum("injected drafter fault" in m for m in logged) == 2  # first failure, disabling


def test_a_failure_then_success_does_not_disable(target, expected):
    drafter = Raising("flaky", good_calls=0)
    engine = _engine(target, {"flaky": drafter})
    engine.generate(PROMPTS[:1], dataclasses.replace(GREEDY, max_tokens=3), SpecParams("flaky"))
    drafter.good_calls = 10**6  # recovers
    ids, _ = _run(engine, ["flaky"] * 4)
    assert ids == expected["greedy"]
    assert not engine.speculator.guards["flaky"].disabled


def test_a_stalled_drafter_is_given_up_for_the_step(target, expected):
    stalling = Stalling()
    engine = _engine(target, {"stalling": stalling, "same": _same(target)}, timeout_s=0.2)
    stalling.armed = True
    start = time.monotonic()
    ids, _ = _run(engine, ["stalling", "same", "stalling", "same"])
    elapsed = time.monotonic() - start
    stalling.release.set()
    assert ids == expected["greedy"]
    assert elapsed < 4  # one deadline, not the stall: the drafter was skipped while busy
    assert engine.drafter_stats["stalling"].num_failed_calls == 1
    assert engine.drafter_stats["same"].num_accepted_tokens > 0


def test_junk_drafts_are_cut_or_dropped(target, expected):
    engine = _engine(target, {"junk": Junk(target.config.vocab_size), "same": _same(target)})
    ids, _ = _run(engine, ["junk", "same", "junk", "none"])
    assert ids == expected["greedy"]
    assert engine.drafter_stats["junk"].num_failed_calls >= 1  # the wrong number of drafts
    assert engine.drafter_stats["same"].num_accepted_tokens > 0


def test_a_huge_top_k_is_off_not_an_overflow(target, expected):
    engine = _engine(target, {})
    huge = dataclasses.replace(SEEDED, top_k=2**70)
    outs = engine.generate(PROMPTS, [huge, SEEDED, huge, SEEDED])
    assert [o.token_ids for o in outs] == expected["seeded"]  # top_k past the vocabulary: off


def _poisoned(params: SamplingParams) -> SamplingParams:
    """Parameters no validator would pass (NaN temperature): sampling with them raises."""
    bad = dataclasses.replace(params)
    object.__setattr__(bad, "temperature", float("nan"))
    return bad


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_request_whose_sampling_raises_fails_alone(target, params):
    engine = _engine(target, {"same": _same(target)})
    others = [PROMPTS[0], PROMPTS[2], PROMPTS[3]]
    alone = [engine.generate([p], params, SpecParams("same"))[0].token_ids for p in others]
    outs = engine.generate(PROMPTS, [params, _poisoned(SEEDED), params, params], SpecParams("same"))
    assert outs[1].finish_reason == "error" and "nan" in outs[1].error.lower()
    assert [o.token_ids for i, o in enumerate(outs) if i != 1] == alone
    assert engine.drafter_stats["same"].num_accepted_tokens > 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks  # nothing held


def test_a_detokenizer_that_raises_fails_its_request_alone(target, expected):
    engine = _engine(target, {})
    ids = [engine.add_request(p, GREEDY) for p in PROMPTS]

    def broken(token_ids):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")

    engine._tracked[ids[2]].detokenizer.add = broken
    final = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
    assert final[ids[2]].finish_reason == "error"
    assert [final[r].token_ids for r in ids if r != ids[2]] == [
        t for i, t in enumerate(expected["greedy"]) if i != 2
    ]


def test_a_failing_policy_means_no_speculation_not_failure(target, expected, caplog):
    engine = _engine(target, {"ngram": NgramDrafter()})

    def broken(requests, load):
        raise RuntimeError("injected policy fault")

    engine.policy.choose = broken
    with caplog.at_level(logging.ERROR, logger="spinserve.engine"):
        ids, outs = _run(engine, [None] * 4)
    assert ids == expected["greedy"]
    assert all(o.finish_reason == "length" for o in outs)
    assert any("injected policy fault" in r.getMessage() or r.exc_info for r in caplog.records)

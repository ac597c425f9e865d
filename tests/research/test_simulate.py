"""The simulator: its accounting, its oracles, and the workloads it ships."""

from __future__ import annotations

import pytest

from research.selection.simulate import (
    StretchOraclePolicy,
    all_arms,
    request_oracle,
    simulate,
)
from research.selection.workloads import (
    HARDWARE,
    REQUEST_TYPES,
    TEXTS,
    DrafterModel,
    Hardware,
    SimRequest,
    Skill,
    goodput,
    make_requests,
)
from spinserve.selection.baselines import FixedPolicy
from spinserve.selection.policy import NO_SPECULATION, Choice

HW = Hardware(
    "exact",
    1.0,
    0.5,
    (DrafterModel("sure", 0.25, 0.0, catchup=0.01), DrafterModel("never", 0.0, 0.0, rounds=False)),
    noise=0.0,
)
SKILLS = {"t": {"sure": Skill(1.0, 1.0), "never": Skill(1.0, 0.0)}}
ARMS = all_arms(HW, (1, 2))


def test_exact_accounting_of_a_fixed_drafter():
    """k = 2 always accepted: 3 tokens per step; a step costs 2 drafting rounds (0.5 s) and a
    forward of 3 tokens (2.5 s); the first step also catches up on the 10 prompt tokens."""
    request = SimRequest("r", "test", (("t", 9),), num_prompt_tokens=10)
    result = simulate(FixedPolicy(Choice("sure", 2)), [request], HW, ARMS, skills=SKILLS)
    assert result.num_tokens == 9 and result.num_steps == 3
    assert result.seconds == pytest.approx(3 * (0.5 + 2.5) + 10 * 0.01)
    assert result.regret == pytest.approx(0.0)  # sure@2 is the best arm here
    assert result.choices["test"] == {"sure@2": 3}


def test_drafts_stop_at_the_end_of_the_request():
    request = SimRequest("r", "test", (("t", 2),), num_prompt_tokens=1)
    result = simulate(FixedPolicy(Choice("sure", 2)), [request], HW, ARMS, skills=SKILLS)
    assert result.num_tokens == 2 and result.num_steps == 1  # drafted 1, not 2


def test_regret_of_a_useless_drafter():
    request = SimRequest("r", "test", (("t", 4),), num_prompt_tokens=1)
    result = simulate(FixedPolicy(Choice("never", 2)), [request], HW, ARMS, skills=SKILLS)
    best = goodput(HW, "t", Choice("sure", 2), 1, SKILLS)  # 1 token/s
    cost = 1.0 + 0.5 * 3
    assert result.regret == pytest.approx(4 * (cost * best - 1.0))


def test_oracles_on_the_shipped_workload():
    hw = HARDWARE["gpu"]
    requests = make_requests(10, seed=0)
    arms = all_arms(hw, (1, 2, 4, 8))
    stretch = simulate(StretchOraclePolicy(requests, hw, arms), requests, hw, arms, seed=0)
    assert stretch.regret == pytest.approx(0.0, abs=1e-9)
    oracle = request_oracle(requests, hw, arms, concurrency=1)
    assert set(oracle.table) == {r.request_id for r in requests}
    none = simulate(FixedPolicy(NO_SPECULATION), requests, hw, arms, seed=0)
    by_oracle = simulate(oracle, requests, hw, arms, seed=0)
    assert stretch.tokens_per_second > by_oracle.tokens_per_second > none.tokens_per_second


def test_workloads_are_consistent():
    for text, skills in TEXTS.items():
        for hw in HARDWARE.values():
            assert set(skills) == set(hw.drafter_names), text
    for rtype in REQUEST_TYPES.values():
        assert all(text in TEXTS for text, _, _ in rtype.segments)
    requests = make_requests(10, seed=1)
    assert requests == make_requests(10, seed=1)
    assert {r.category for r in requests} == set(REQUEST_TYPES)

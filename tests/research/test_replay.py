"""Replaying recorded drafts: steps advance by the recorded matches, time by the cost model."""

from __future__ import annotations

import pytest

from research.selection.replay import (
    CostModel,
    DrafterCost,
    TracedRequest,
    calibration,
    hindsight,
    oracle,
    replay,
    shuffled,
)
from spinserve.selection.baselines import FixedPolicy
from spinserve.selection.policy import NO_SPECULATION, Choice
from spinserve.selection.spin import SpinPolicy

# A forward of n tokens costs 10 + n ms at context 0 and twice that at context 1000.
COST = CostModel(
    contexts=(0, 1000),
    forward=(
        tuple(0.010 + 0.001 * n for n in range(1, 6)),
        tuple(2 * (0.010 + 0.001 * n) for n in range(1, 6)),
    ),
    drafters={
        "lookup": DrafterCost(call=0.0001, per_round=0.0, rounds=False),
        "model": DrafterCost(call=0.0, per_round=0.002, catchup=0.0005),
    },
)


def traced(rid: str = "r", prompt: int = 0) -> TracedRequest:
    # 8 output tokens; the lookup proposes 4 everywhere and matches 2 at positions 1 and 4;
    # the model proposes 4 and matches all it can
    lookup = [(4, 2) if t in (1, 4) else (4, 0) for t in range(8)]
    model = [(4, min(4, 7 - t)) for t in range(8)]
    return TracedRequest(rid, "cat", prompt, 8, {"lookup": lookup, "model": model})


def test_target_alone_costs_one_decode_per_token_after_the_first():
    result = replay(FixedPolicy(NO_SPECULATION), [traced()], COST)
    assert result.tokens == {"r": 7}
    assert result.seconds["r"] == pytest.approx(sum(f(t, 1) for t in range(1, 8)))
    assert result.choices == {"none": 7}


def f(context: int, num_tokens: int) -> float:
    return COST.forward_seconds(context, num_tokens)


def test_a_fixed_drafter_advances_by_its_recorded_matches():
    # t = 1: 4 drafted, 2 accepted -> t = 4: 3 drafted (room), 2 accepted -> t = 7: no room
    # for a draft, so no drafter call -> t = 8, the end
    result = replay(FixedPolicy(Choice("lookup", 4)), [traced()], COST)
    expected = (0.0001 + f(1, 5)) + (0.0001 + f(4, 4)) + f(7, 1)
    assert result.seconds["r"] == pytest.approx(expected)
    assert result.choices == {"lookup@4": 3}


def test_a_model_drafter_pays_rounds_and_its_catch_up_once():
    # t = 1: catch up on the 1-token context, 2 rounds, both accepted -> t = 4: in step, no
    # catch-up -> t = 7: no room, no call
    result = replay(FixedPolicy(Choice("model", 2)), [traced()], COST)
    expected = (0.0005 * 1 + 2 * 0.002 + f(1, 3)) + (2 * 0.002 + f(4, 3)) + f(7, 1)
    assert result.seconds["r"] == pytest.approx(expected)
    assert result.tokens_per_second() == pytest.approx(7 / expected)


def test_forward_cost_follows_the_context_length():
    assert COST.forward_seconds(500, 1) == pytest.approx(0.0165)
    assert COST.forward_seconds(5000, 2) == pytest.approx(0.024)  # flat past the last
    with pytest.raises(ValueError, match="not measured"):
        COST.forward_seconds(0, 6)


def test_spin_replays_and_learns_across_requests():
    requests = [traced(f"r{i}") for i in range(6)]
    policy = SpinPolicy(["lookup", "model"])
    result = replay(policy, shuffled(requests, 1), COST)
    assert sum(result.tokens.values()) == 6 * 7
    assert sum(result.choices.values()) >= 6 * 2
    steps, drafts = calibration(COST)
    assert [s.num_batched_tokens for s in steps] == [1, 3, 5]
    assert {d.drafter for d in drafts} == {"lookup", "model"}


def test_recordings_round_trip_and_are_checked():
    request = traced()
    assert TracedRequest.from_json(request.to_json()) == request
    assert CostModel.from_json(COST.to_json()) == COST
    with pytest.raises(ValueError, match="positions"):
        TracedRequest("r", "c", 0, 3, {"lookup": [(1, 0)]})
    with pytest.raises(ValueError, match="matched more"):
        TracedRequest("r", "c", 0, 1, {"lookup": [(1, 2)]})
    with pytest.raises(ValueError, match="increase"):
        CostModel((5, 1), ((1.0,), (1.0,)), {})


def test_the_oracle_takes_each_requests_fastest_arm():
    arms = [NO_SPECULATION, Choice("lookup", 4), Choice("model", 2)]
    best = oracle([traced()], COST, arms)
    alone = [replay(FixedPolicy(arm), [traced()], COST).seconds["r"] for arm in arms]
    assert best.seconds["r"] == pytest.approx(min(alone))
    assert best.choices == {arms[alone.index(min(alone))].label: 1}


def test_hindsight_is_a_bound_on_every_policy_and_switches_per_step():
    requests = [traced(f"r{i}") for i in range(3)]
    bound = hindsight(requests, COST, ["lookup", "model"])
    arms = [NO_SPECULATION, *(Choice(d, k) for d in ("lookup", "model") for k in range(1, 5))]
    best_per_request = oracle(requests, COST, arms)
    learned = replay(SpinPolicy(["lookup", "model"]), requests, COST)
    for rid in bound.seconds:
        assert bound.seconds[rid] <= best_per_request.seconds[rid] + 1e-12
        assert bound.seconds[rid] <= learned.seconds[rid] + 1e-12
    assert bound.tokens == best_per_request.tokens
    # against every sequence of per-step choices, tried one by one
    [request] = requests[:1]

    def fastest(t: int) -> float:
        if t >= request.num_output_tokens:
            return 0.0
        options = [f(t, 1) + fastest(t + 1)]
        for arm in arms[1:]:
            k = arm.num_draft_tokens
            if k <= request.num_output_tokens - t - 1:
                proposed, matched = request.drafts[arm.drafter][t]
                drafted = min(k, proposed)
                draft = COST.draft_seconds(arm.drafter, k, t, 0)
                options.append(draft + f(t, drafted + 1) + fastest(t + min(matched, drafted) + 1))
        return min(options)

    assert bound.seconds["r0"] == pytest.approx(fastest(1))
    assert sum(bound.choices.values()) < 3 * 7  # it drafts: fewer steps than tokens
    # with no drafter it is the target alone
    assert hindsight([traced()], COST, []).seconds["r"] == pytest.approx(
        replay(FixedPolicy(NO_SPECULATION), [traced()], COST).seconds["r"]
    )

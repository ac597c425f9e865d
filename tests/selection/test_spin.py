"""`spin` step by step on hand-made views and outcomes: its parameters, the protocol's edges,
and the costs it prices before it has seen an outcome (calibration, catch-up, load).
(`spin` learning in the simulator: tests/research/test_spin_simulated.py.)"""

from __future__ import annotations

import pytest

from spinserve.selection.policy import (
    NO_SPECULATION,
    Choice,
    DraftTiming,
    Feedback,
    LoadView,
    RequestView,
    StepTiming,
)
from spinserve.selection.spin import SpinParams, SpinPolicy

DRAFTERS = ("model", "lookup", "weak")


def test_protocol_edges():
    """Feedback for a request never chosen for, finishing an unknown request, and an empty
    step are all fine."""
    policy = SpinPolicy(DRAFTERS)
    assert policy.choose([], LoadView(1)) == []
    fb = Feedback("stranger", Choice("lookup", 4), 4, 2, 0.001)
    policy.observe([fb], StepTiming(0.01, 5, 1))
    policy.finish("stranger")
    policy.finish("never-seen")
    [choice] = policy.choose([RequestView("x", 10, 0)], LoadView(1))
    assert choice == NO_SPECULATION or choice.drafter in DRAFTERS


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(draft_lengths=()), "draft_lengths"),
        (dict(draft_lengths=(0,)), "draft_lengths"),
        (dict(draft_lengths=(17,)), "draft_lengths"),
        (dict(exploration=-1), "exploration"),
        (dict(discount=0.0), "discount"),
        (dict(discount=1.5), "discount"),
        (dict(change_threshold=-1), "change_threshold"),
        (dict(output_tokens=0.5), "output_tokens"),
    ],
)
def test_bad_params(params, message):
    with pytest.raises(ValueError, match=message):
        SpinParams(**params)


def test_needs_a_drafter():
    with pytest.raises(ValueError, match="at least one drafter"):
        SpinPolicy(())


def test_calibrated_step_costs_stop_speculation_where_drafts_cost_a_decode():
    """Under load on a machine where each extra token costs as much as a decode row (a
    2-core CPU), a policy that knows the forward's cost line does not draft before it has
    seen a single outcome; one that does not know it starts by paying to learn it."""
    views = [RequestView(f"r{i}", 50, 0) for i in range(8)]
    load = LoadView(8)
    steep = [StepTiming(0.040 * n, n, 1) for n in (1, 3, 5, 9)]  # no fixed part at all
    calibrated = SpinPolicy(["lookup"], SpinParams(seed=0))
    calibrated.calibrate(steep)
    assert calibrated.choose(views, load) == [NO_SPECULATION] * 8
    cold = SpinPolicy(["lookup"], SpinParams(seed=0))
    assert any(c.speculates for c in cold.choose(views, load))
    # Where extra tokens are nearly free (weights read once), calibration lets it draft.
    flat = SpinPolicy(["lookup"], SpinParams(seed=0))
    flat.calibrate([StepTiming(0.040 + 0.0005 * n, n, 1) for n in (1, 3, 5, 9)])
    assert all(c.speculates for c in flat.choose(views[:1], LoadView(1)))


def test_catchup_is_paid_only_where_the_rest_of_the_request_repays_it():
    """The same long prompt, caught up on by a drafter that saw all but its last 10 tokens,
    costs almost nothing: catch-up is charged for the tokens a drafter has not seen."""
    policy = SpinPolicy(("model",), SpinParams(seed=0))
    policy.calibrate(
        [StepTiming(0.010 + 0.002 * n, n, 1) for n in (1, 3, 5, 9)],
        [DraftTiming("model", n, 0.002 + 0.002 * n) for n in (1, 64)],
    )
    [cold] = policy.choose([RequestView("r", 2000, 0)], LoadView(1))
    assert cold == NO_SPECULATION
    state = policy._requests["r"]
    state.seen["model"] = 2000 - 10  # it drafted for "r" before, 10 tokens ago
    [warm] = policy.choose([RequestView("r", 2000, 1)], LoadView(1))
    assert warm.drafter == "model"


def drafted_under(policy: SpinPolicy, running: int, steps: int = 200) -> int:
    """Requests that drafted over ``steps`` choices for ``running`` fresh requests, on a
    forward of 20 ms plus 20 ms a token."""
    policy.calibrate([StepTiming(0.020 + 0.020 * n, n, 1) for n in (1, 3, 5, 9)])
    views = [RequestView(f"r{i}", 50, 0) for i in range(running)]
    load = LoadView(running)
    return sum(c.speculates for _ in range(steps) for c in policy.choose(views, load))


def test_only_the_posterior_mean_drafts_in_a_batch():
    """Where each token costs 20 ms on a 20 ms fixed part, a batch of 8 pays for a draft
    token only if it is accepted ~9 times in 10, which the prior does not expect: no request
    of a batch drafts on a draw alone, while alone the same draws still explore.
    (Exploring under load, measured and rejected: tests/research/test_variants.py.)"""
    assert drafted_under(SpinPolicy(["lookup"], SpinParams(seed=1)), 8) == 0
    assert drafted_under(SpinPolicy(["lookup"], SpinParams(seed=1)), 1) > 0

"""The variants `spin` was measured against, each its own knob of `VariantParams`: streak
statistics, a cap after a rejection, exploring under load, the naive split of a forward, and
the checks on knobs that only some arm models take."""

from __future__ import annotations

import pytest

from research.selection.flat_arms import FlatArms, token_share_seconds
from research.selection.params import VariantParams
from research.selection.variants import VariantPolicy
from spinserve.selection.policy import Choice, Feedback, LoadView, RequestView, StepTiming
from spinserve.selection.spin import SpinParams, SpinPolicy


def test_streaks_keep_the_steps_after_a_whole_pass_apart():
    """With ``streaks``, a step right after one whose every draft token passed is learned in
    the drafter's streak statistics; a miss or a partial pass goes back to its own."""
    policy = VariantPolicy(("a",), VariantParams(seed=0, streaks=True))
    [choice] = policy.choose([RequestView("r", 20, 0)], LoadView(1))
    k = choice.num_draft_tokens
    timing = StepTiming(0.01, k + 1, 1)
    policy.observe([Feedback("r", choice, k, k, 0.0)], timing)  # whole pass: a streak
    state = policy._requests["r"]
    assert state.streak and set(state.stats) == {"a"}
    [choice] = policy.choose([RequestView("r", 20, k + 1)], LoadView(1))
    k2 = choice.num_draft_tokens
    policy.observe([Feedback("r", choice, k2, 0, 0.0)], StepTiming(0.01, k2 + 1, 1))
    assert not state.streak and set(state.stats) == {"a", ("a", "streak")}
    assert state.stats[("a", "streak")].trials[0] == 1  # the miss, counted in the streak
    # without streaks one set of statistics, whatever passed
    plain = VariantPolicy(("a",), VariantParams(seed=0))
    [choice] = plain.choose([RequestView("r", 20, 0)], LoadView(1))
    plain.observe([Feedback("r", choice, k, k, 0.0)], timing)
    [choice] = plain.choose([RequestView("r", 20, k + 1)], LoadView(1))
    plain.observe([Feedback("r", choice, k2, 0, 0.0)], StepTiming(0.01, k2 + 1, 1))
    assert set(plain._requests["r"].stats) == {"a"}


def test_after_a_rejected_draft_the_next_is_capped():
    """With ``cap_after_reject``, the step after one in which a draft token failed drafts at
    most that many; a whole pass lifts the cap (a lookup's copy passes or fails as a whole, so
    a failure says the copied run has ended)."""
    params = VariantParams(seed=0, rule="greedy", exploration=0.0, cap_after_reject=2)
    policy = VariantPolicy(("a",), params)
    out = 0

    def draft(accepted_of: int) -> Choice:
        nonlocal out
        [choice] = policy.choose([RequestView("r", 20, out)], LoadView(1))
        k = choice.num_draft_tokens
        accepted = min(accepted_of, k)
        policy.observe([Feedback("r", choice, k, accepted, 0.0)], StepTiming(0.01, k + 1, 1))
        out += accepted + 1
        return choice

    for _ in range(3):
        assert draft(accepted_of=99).num_draft_tokens == 4  # whole passes: the longest k
    draft(accepted_of=1)  # a partial pass
    assert draft(accepted_of=99).num_draft_tokens <= 2
    assert draft(accepted_of=99).num_draft_tokens == 4  # the whole pass lifted it
    draft(accepted_of=0)  # a miss
    assert draft(accepted_of=0).num_draft_tokens <= 2
    # without the cap, k stays where the rates put it
    plain = VariantPolicy(("a",), VariantParams(seed=0, rule="greedy", exploration=0.0))
    [choice] = plain.choose([RequestView("r", 20, 0)], LoadView(1))
    plain.observe([Feedback("r", choice, 4, 1, 0.0)], StepTiming(0.01, 5, 1))
    [choice] = plain.choose([RequestView("r", 20, 2)], LoadView(1))
    assert choice.num_draft_tokens > 2


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(rule="softmax"), "rule must be one of"),
        (dict(model="tree"), "model must be one of"),
        (dict(reward="latency"), "reward must be one of"),
        (dict(window=-1), "window"),
        (dict(window=10), "need model='flat'"),
        (dict(reward="direct"), "need model='flat'"),
        (dict(cap_after_reject=-1), "cap_after_reject"),
        (dict(discount=0.0), "discount"),  # the product's own checks still apply
    ],
)
def test_bad_params(params, message):
    with pytest.raises(ValueError, match=message):
        VariantParams(**params)


def test_research_arms_refuse_the_products_params():
    with pytest.raises(TypeError, match="VariantParams"):
        SpinPolicy(["a"], SpinParams(), arms=FlatArms)


def drafted_under(explore_under_load: bool, running: int, steps: int = 200) -> int:
    """As tests/selection/test_spin.py: a forward of 20 ms plus 20 ms a token."""
    policy = VariantPolicy(["lookup"], VariantParams(seed=1, explore_under_load=explore_under_load))
    policy.calibrate([StepTiming(0.020 + 0.020 * n, n, 1) for n in (1, 3, 5, 9)])
    views = [RequestView(f"r{i}", 50, 0) for i in range(running)]
    load = LoadView(running)
    return sum(c.speculates for _ in range(steps) for c in policy.choose(views, load))


def test_exploring_under_load_drafts_on_draws_and_changes_nothing_alone():
    assert drafted_under(True, 8) > 0
    assert drafted_under(False, 8) == 0
    assert drafted_under(True, 1) == drafted_under(False, 1) > 0


def test_the_naive_split_charges_drafts_their_share_of_the_fixed_part():
    """A request with 4 drafts in a forward of 16 tokens for 4 sequences pays 5/16 of it."""
    fb = Feedback("r", Choice("x", 4), 4, 0, 0.001)
    assert token_share_seconds(fb, StepTiming(0.46, 16, 4)) == pytest.approx(0.001 + 0.46 * 5 / 16)

"""Request bookkeeping of `spin`: catch-up tokens per drafter, the per-step weighing of later
tokens, and a restart when the text changes."""

from __future__ import annotations

from spinserve.selection.arms import RequestState
from spinserve.selection.policy import (
    NO_SPECULATION,
    Choice,
    Feedback,
    LoadView,
    RequestView,
    StepTiming,
)
from spinserve.selection.spin import SpinParams, SpinPolicy


def test_catchup_tokens_follow_the_drafters_used():
    state = RequestState(num_tokens=100)
    assert state.catchup_tokens("qwen") == 100  # never drafted: the whole prompt
    state.chose(Choice("qwen", 4))
    assert state.catchup == 100 and state.catchup_tokens("qwen") == 0
    state.num_tokens = 104
    assert state.catchup_tokens("qwen") == 0  # used last step: only its new tokens
    assert state.catchup_tokens("ngram") == 104
    state.chose(NO_SPECULATION)
    state.num_tokens = 105
    assert state.catchup_tokens("qwen") == 5  # one step without it
    state.chose(Choice("ngram", 4))
    assert state.catchup == 105


def step(policy: SpinPolicy, rid: str, num_output: int, accepted_if: str) -> Choice:
    [choice] = policy.choose([RequestView(rid, 20, num_output)], LoadView(1))
    drafted = choice.num_draft_tokens
    accepted = drafted if choice.drafter == accepted_if else 0
    policy.observe(
        [Feedback(rid, choice, drafted, accepted, 0.001 * drafted)],
        StepTiming(0.01 + 0.001 * (drafted + 1), drafted + 1, 1),
    )
    return choice


def steps_of(state: RequestState, drafter: str) -> float:
    """A drafter's (discounted) steps in a request, in and out of streaks."""
    return sum(
        stats.trials[0]
        for key, stats in state.stats.items()
        if key == drafter or (isinstance(key, tuple) and key[0] == drafter)
    )


def test_a_change_of_text_restarts_the_request():
    """One drafter always right, then always wrong: the CUSUM fires (and not before) and the
    request's statistics are dropped, so it explores again instead of trusting the old
    stretch."""
    policy = SpinPolicy(("a", "b"), SpinParams(seed=0))
    out = 0
    for _ in range(60):
        choice = step(policy, "r", out, accepted_if="a")
        out += choice.num_draft_tokens + 1
    state = policy._requests["r"]
    assert state.num_restarts == 0 and steps_of(state, "a") > 10
    for _ in range(10):
        step(policy, "r", out, accepted_if="b")
        out += 1
        if state.num_restarts:
            break
    assert state.num_restarts == 1
    assert steps_of(state, "a") <= 1


def test_streaks_keep_the_steps_after_a_whole_pass_apart():
    """With ``streaks``, a step right after one whose every draft token passed is learned in
    the drafter's streak statistics; a miss or a partial pass goes back to its own."""
    policy = SpinPolicy(("a",), SpinParams(seed=0, streaks=True))
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
    plain = SpinPolicy(("a",), SpinParams(seed=0))
    [choice] = plain.choose([RequestView("r", 20, 0)], LoadView(1))
    plain.observe([Feedback("r", choice, k, k, 0.0)], timing)
    [choice] = plain.choose([RequestView("r", 20, k + 1)], LoadView(1))
    plain.observe([Feedback("r", choice, k2, 0, 0.0)], StepTiming(0.01, k2 + 1, 1))
    assert set(plain._requests["r"].stats) == {"a"}


def test_after_a_rejected_draft_the_next_is_capped():
    """With ``cap_after_reject``, the step after one in which a draft token failed drafts at
    most that many; a whole pass lifts the cap (a lookup's copy passes or fails as a whole, so
    a failure says the copied run has ended)."""
    params = SpinParams(seed=0, rule="greedy", exploration=0.0, cap_after_reject=2)
    policy = SpinPolicy(("a",), params)
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
    plain = SpinPolicy(("a",), SpinParams(seed=0, rule="greedy", exploration=0.0))
    [choice] = plain.choose([RequestView("r", 20, 0)], LoadView(1))
    plain.observe([Feedback("r", choice, 4, 1, 0.0)], StepTiming(0.01, 5, 1))
    [choice] = plain.choose([RequestView("r", 20, 2)], LoadView(1))
    assert choice.num_draft_tokens > 2

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

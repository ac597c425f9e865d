"""`spin` with the alternatives it was measured against, one `VariantParams` knob each: other
exploration rules (UCB, epsilon-greedy), streak statistics, a cap on k after a rejection,
exploring under load, no shared prior, and every drafter x k its own arm (`flat_arms`).

With default `VariantParams` a `VariantPolicy` makes the same choices as the product's
`SpinPolicy` (tests/research/test_variants.py checks), so an experiment's ``spin`` row is the
shipped policy and each variant differs from it in what its knobs say.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from research.selection.flat_arms import FlatArms
from research.selection.params import VariantParams, variant_params
from spinserve.selection.arms import DrafterArms, RequestState, Shared
from spinserve.selection.policy import NO_SPECULATION, Choice, Feedback, StepTiming
from spinserve.selection.spin import SpinPolicy

STREAK = "streak"  # the second part of a drafter's streak statistics key


@dataclass
class VariantState(RequestState):
    """A request's state with what the streak and cap variants remember of its last step."""

    streak: bool = False  # whether the last step of a drafter had every draft token pass
    rejected: bool = False  # whether the last step that drafted had a draft token rejected


class VariantArms(DrafterArms):
    """The product's arm model with the ``rule``, ``streaks`` and ``cap_after_reject`` knobs."""

    def __init__(self, drafters: Sequence[str], shared: Shared) -> None:
        super().__init__(drafters, shared)
        self.p = variant_params(shared.params)

    def new_state(self) -> VariantState:
        return VariantState()

    def key(self, state: RequestState, drafter: str) -> Hashable:
        """With ``streaks``, right after a step (of any drafter) whose every draft token
        passed, the drafter's streak statistics. The two differ by much: replaying real
        lookup drafts at k = 4, after a whole pass the next draft's first token passed ~91%
        of the time, after a miss or a partial pass 27-35% (docs/design.md, "Streaks")."""
        if self.p.streaks and _variant(state).streak:
            return (drafter, STREAK)
        return drafter

    def draft_lengths(self, state: RequestState) -> list[int]:
        cap = self.p.cap_after_reject
        if not (cap and _variant(state).rejected):
            return self.lengths
        return [k for k in self.lengths if k <= cap] or self.lengths

    def draw_rate(self, a: float, b: float, total: float) -> float:
        """``thompson``: the product's draw; ``ucb``: ``exploration`` standard deviations of
        optimism growing with the request's steps; ``greedy``: the mean."""
        if self.p.rule == "thompson":
            return super().draw_rate(a, b, total)
        a, b = max(a, 1e-3), max(b, 1e-3)
        mean = a / (a + b)
        if self.p.rule == "ucb":
            var = a * b / ((a + b) ** 2 * (a + b + 1.0))
            optimism = self.p.exploration * math.sqrt(2.0 * math.log(max(total, 2.0)) * var)
            return min(1.0, mean + optimism)
        return mean

    def record(self, state: RequestState, fb: Feedback, timing: StepTiming) -> None:
        super().record(state, fb, timing)
        if fb.choice.drafter is None:
            return
        state = _variant(state)
        state.streak = bool(fb.num_drafted) and fb.num_accepted == fb.num_drafted
        if fb.num_drafted:
            state.rejected = fb.num_accepted < fb.num_drafted


def _variant(state: RequestState) -> VariantState:
    assert isinstance(state, VariantState), "VariantArms made this state"
    return state


class VariantPolicy(SpinPolicy):
    """`SpinPolicy` over `VariantArms` or `FlatArms`, with the policy-level knobs: the
    epsilon-greedy coin, the flat ``direct`` reward (which learns no speculation as an arm),
    ``explore_under_load`` and ``shared_prior``."""

    def __init__(self, drafters: Sequence[str], params: VariantParams | None = None) -> None:
        p = params or VariantParams()
        super().__init__(drafters, p, FlatArms if p.model == "flat" else VariantArms)
        self.variant = p

    def _choose_one(self, state: RequestState, num_running: int, no_spec: float) -> Choice:
        p, rng = self.variant, self.shared.rng
        if p.rule == "greedy" and rng.random() < p.exploration:
            d = rng.choice([*self.model.drafters, None])
            return NO_SPECULATION if d is None else Choice(d, rng.choice(p.draft_lengths))
        choice, score = self.model.best(state, num_running)
        if p.model == "flat" and p.reward == "direct":  # no speculation is learned then
            return choice
        if score <= no_spec:
            return NO_SPECULATION
        if num_running > 1 and not p.explore_under_load:
            _, mean_score = self.model.best(state, num_running, explore=False)
            if mean_score <= no_spec:
                return NO_SPECULATION
        return choice

    def finish(self, request_id: str) -> None:
        if self.variant.shared_prior:
            super().finish(request_id)
            return
        state = self._requests.pop(request_id, None)
        if state is not None:
            self.shared.horizon.learn(state.num_output_tokens + state.num_emitted)

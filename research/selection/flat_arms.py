"""The alternative arm model `spin` was measured against (docs/design.md), passed to
`SpinPolicy` as its ``arms`` by `variants.variant_policy` with ``model="flat"``: every drafter x k
is an arm whose value per step is its tokens emitted (``factored``: divided by the predicted
seconds when scoring) or its tokens per token-share second in a running unit (``direct``,
which also learns no speculation as an arm, per load bucket). Gaussian beliefs, forgetting by
discount or sliding window.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Hashable, Sequence

from research.selection import estimators as est
from research.selection.params import VariantParams, variant_params
from spinserve.config.selection import SpinParams
from spinserve.selection.arms import RequestState, Shared
from spinserve.selection.policy import NO_SPECULATION, Choice, Feedback, StepTiming
from spinserve.selection.prior import ArmPrior


def explore_value(belief: est.Belief, total: float, p: VariantParams, rng: random.Random) -> float:
    """The configured rule applied to a Gaussian belief."""
    if p.rule == "thompson":
        return est.thompson_value(belief, rng, p.exploration)
    if p.rule == "ucb":
        return est.ucb_value(belief, total, p.exploration)
    return est.greedy_value(belief)


def token_share_seconds(feedback: Feedback, timing: StepTiming) -> float:
    """The naive split of a step's cost: drafting share plus the forward divided by tokens
    (`spinserve.selection.cost` says why the product splits by marginal cost instead)."""
    share = feedback.num_verified_tokens / timing.num_batched_tokens
    return feedback.draft_seconds + timing.forward_seconds * share


def step_seconds(
    shared: Shared,
    state: RequestState,
    drafter: str,
    k: int,
    drafted: float,
    emitted: float,
    num_running: int,
) -> float:
    """Expected cost of a step that drafts ``drafted`` and emits ``emitted`` tokens:
    drafting, its part of a catch-up, and the marginal forward share."""
    return (
        shared.draft.seconds(drafter, state.bucket, k)
        + shared.catchup_per_token(state, drafter) * emitted
        + shared.forward.share(num_running, 1.0 + drafted)
    )


class FlatArms:
    """Every drafter x k is an arm whose value per step is tokens emitted (``factored``) or
    tokens / token-share seconds in a running unit (``direct``, also learning no speculation)."""

    def __init__(self, drafters: Sequence[str], shared: Shared) -> None:
        self.drafters = list(drafters)
        self.s = shared
        self.p = variant_params(shared.params)
        lengths = sorted(set(self.p.draft_lengths))
        self.arms = [Choice(d, k) for d in drafters for k in lengths]
        self.direct = self.p.reward == "direct"
        if self.direct:
            self.arms.append(NO_SPECULATION)
        self._unit = 0.0  # running mean of direct rewards

    def new_state(self) -> RequestState:
        return RequestState()

    def best(
        self, state: RequestState, num_running: int, explore: bool = True
    ) -> tuple[Choice, float]:
        best, best_score = NO_SPECULATION, -1.0
        total = sum(self._stats(state, a.label).weight for a in self.arms) + 1.0
        for arm in self.arms:
            belief = est.posterior(self._stats(state, arm.label), self._prior(arm, state))
            value = explore_value(belief, total, self.p, self.s.rng) if explore else belief.mean
            if not self.direct:
                value = min(max(value, 1.0), arm.num_draft_tokens + 1.0)
                seconds = step_seconds(
                    self.s,
                    state,
                    arm.drafter,  # type: ignore[arg-type]
                    arm.num_draft_tokens,
                    belief.mean_drafted,
                    value,
                    num_running,
                )
                value /= max(seconds, 1e-12)
            if value > best_score:
                best, best_score = arm, value
        return best, best_score

    def _stats(self, state: RequestState, label: str) -> est.ArmStats:
        p = self.p
        if p.window:
            history = state.stats.get(label, ())
            return est.window_stats(history, state.step, p.window)
        old = state.stats.get(label, est.ArmStats())
        return est.decay(old, state.step, p.discount)

    def _key(self, label: str, state: RequestState) -> Hashable:
        """Emitted tokens do not depend on the load; direct rewards do: per load bucket."""
        return (label, state.bucket) if self.direct else label

    def _prior(self, arm: Choice, state: RequestState) -> ArmPrior:
        return self.s.prior.prior(self._key(arm.label, state))

    def record(self, state: RequestState, fb: Feedback, timing: StepTiming) -> None:
        if fb.choice.drafter is None and not self.direct:
            return
        value = float(fb.num_emitted)
        if self.direct:
            goodput = fb.num_emitted / max(token_share_seconds(fb, timing), 1e-12)
            self._unit = goodput if not self._unit else self._unit + 0.01 * (goodput - self._unit)
            value = goodput / self._unit
        label, p = fb.choice.label, self.p
        if p.window:
            history = state.stats.setdefault(label, deque(maxlen=p.window))
            history.append((state.step, value, fb.num_drafted))
        else:
            old = state.stats.get(label, est.ArmStats())
            state.stats[label] = est.add(old, value, fb.num_drafted, state.step, p.discount)
        state.tally(self._key(label, state), 1, value, value * value, fb.num_drafted)

    @staticmethod
    def default_prior(params: SpinParams) -> Callable[[Hashable], ArmPrior]:
        """Emitted tokens uniform on [1, k + 1]; direct rewards 1 +- 1 in their running unit."""
        if variant_params(params).reward == "direct":
            return lambda key: ArmPrior(1.0, 1.0, 1.0, 0.0)

        def uniform(label: Hashable) -> ArmPrior:
            k = Choice.parse(str(label)).num_draft_tokens
            var = max(k * k / 12.0, 0.25)
            return ArmPrior(1.0 + k / 2.0, var, var, float(k))

        return uniform

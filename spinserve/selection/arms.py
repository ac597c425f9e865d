"""How `spin` models a request's arms: per drafter with k derived (`DrafterArms`, the default),
or every drafter x k as its own arm (`FlatArms`, kept for the comparison that chose the
first). Both score a speculating choice by expected tokens / expected seconds and explore by
the configured rule; `SpinPolicy` compares the best with not speculating.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from spinserve.selection import acceptance as acc
from spinserve.selection import estimators as est
from spinserve.selection.cost import DraftCost, ForwardCost, token_share_seconds
from spinserve.selection.policy import NO_SPECULATION, Choice, Feedback, StepTiming
from spinserve.selection.prior import SharedPrior

if TYPE_CHECKING:
    from spinserve.selection.spin import SpinParams


@dataclass
class RequestState:
    """One request's bandit: its step count, load bucket now, and per-model statistics."""

    step: int = 0
    bucket: int = 0
    stats: dict[str, object] = field(default_factory=dict)  # arm or drafter -> statistics
    totals: dict[Hashable, list[float]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    )  # prior key -> [count, total, total_sq, drafted], undiscounted: taught to the prior

    def tally(
        self, key: Hashable, count: int, total: float, total_sq: float, drafted: float = 0.0
    ) -> None:
        sums = self.totals[key]
        sums[0] += count
        sums[1] += total
        sums[2] += total_sq
        sums[3] += drafted


@dataclass
class Shared:
    """What all requests share: the cost lines, the prior, the random generator."""

    params: SpinParams
    forward: ForwardCost
    draft: DraftCost
    prior: SharedPrior
    rng: random.Random


def explore(belief: est.Belief, total: float, shared: Shared) -> float:
    """The configured rule applied to a Gaussian belief."""
    p = shared.params
    if p.rule == "thompson":
        return est.thompson_value(belief, shared.rng, p.exploration)
    if p.rule == "ucb":
        return est.ucb_value(belief, total, p.exploration)
    return est.greedy_value(belief)


def explore_rate(successes: float, failures: float, prior: est.ArmPrior, total: float,
                 shared: Shared) -> float:
    """The configured rule applied to a Beta belief about a rate (prior as pseudo-counts)."""
    pseudo = prior.noise / prior.spread
    a = max(prior.mean * pseudo + successes, 1e-3)
    b = max((1.0 - prior.mean) * pseudo + failures, 1e-3)
    p = shared.params
    if p.rule == "thompson":
        widen = max(p.exploration, 1e-3) ** 2
        return shared.rng.betavariate(a / widen, b / widen)
    mean = a / (a + b)
    if p.rule == "ucb":
        var = a * b / ((a + b) ** 2 * (a + b + 1.0))
        return min(1.0, mean + p.exploration * math.sqrt(2.0 * math.log(max(total, 2.0)) * var))
    return mean


class DrafterArms:
    """Arms are drafters; each step's k is the best for the drafter's (explored) rates."""

    def __init__(self, drafters: Sequence[str], shared: Shared) -> None:
        self.drafters = list(drafters)
        self.lengths = sorted(set(shared.params.draft_lengths))
        self.s = shared
        self._fill: dict[str, float] = {}  # drafter -> moving average of drafted / asked

    def best(self, state: RequestState, num_running: int) -> tuple[Choice, float]:
        best, best_score = NO_SPECULATION, -1.0
        stats = {d: self._stats(state, d) for d in self.drafters}
        total = sum(s.trials[0] for s in stats.values()) + 1.0
        for drafter in self.drafters:
            rates = self._rates(drafter, stats[drafter], total)
            for k in self.lengths:
                drafted = rates.expected_drafted(k)
                seconds = self.s.draft.seconds(drafter, state.bucket, k) + self.s.forward.share(
                    num_running, 1.0 + drafted
                )
                score = rates.expected_emitted(k) / max(seconds, 1e-12)
                if score > best_score:
                    best, best_score = Choice(drafter, k), score
        return best, best_score

    def _stats(self, state: RequestState, drafter: str) -> acc.DrafterStats:
        old = state.stats.get(drafter, acc.DrafterStats())
        return acc.decay(old, state.step, self.s.params.discount)  # type: ignore[arg-type]

    def _rates(self, drafter: str, stats: acc.DrafterStats, total: float) -> acc.Rates:
        values = []
        for i, name in enumerate(acc.RATES):
            prior = self.s.prior.prior((drafter, name))
            n, won = stats.trials[i], stats.successes[i]
            values.append(explore_rate(won, n - won, prior, total, self.s))
        global_fill = self._fill.get(drafter, 1.0)
        fill = (stats.filled + global_fill) / (stats.trials[1] + 1.0)
        return acc.Rates(*values, fill=fill)

    def record(self, state: RequestState, fb: Feedback, timing: StepTiming) -> None:
        if fb.choice.drafter is None:
            return  # one token, one forward share: nothing to learn
        d, k = fb.choice.drafter, fb.choice.num_draft_tokens
        old = state.stats.get(d, acc.DrafterStats())
        state.stats[d] = acc.record(
            old, k, fb.num_drafted, fb.num_accepted, state.step, self.s.params.discount  # type: ignore[arg-type]
        )
        trials, successes = acc.outcome_counts(fb.num_drafted, fb.num_accepted)
        for name, n, won in zip(acc.RATES, trials, successes, strict=True):
            if n:
                state.tally((d, name), n, won, won)
        if fb.num_drafted:
            old_fill = self._fill.get(d, 1.0)
            self._fill[d] = old_fill + 0.05 * (fb.num_drafted / k - old_fill)

    @staticmethod
    def default_prior(key: Hashable) -> est.ArmPrior:
        """A rate nobody measured yet: mean 1/2, as sure as three trials."""
        return est.ArmPrior(0.5, 1.0 / 12.0, 0.25, 0.0)


class FlatArms:
    """Every drafter x k is an arm whose value per step is tokens emitted (``factored``) or
    tokens / token-share seconds in a running unit (``direct``, also learning no speculation)."""

    def __init__(self, drafters: Sequence[str], shared: Shared) -> None:
        self.s = shared
        lengths = sorted(set(shared.params.draft_lengths))
        self.arms = [Choice(d, k) for d in drafters for k in lengths]
        self.direct = shared.params.reward == "direct"
        if self.direct:
            self.arms.append(NO_SPECULATION)
        self._unit = 0.0  # running mean of direct rewards

    def best(self, state: RequestState, num_running: int) -> tuple[Choice, float]:
        best, best_score = NO_SPECULATION, -1.0
        total = sum(self._stats(state, a.label).weight for a in self.arms) + 1.0
        for arm in self.arms:
            belief = est.posterior(self._stats(state, arm.label), self._prior(arm, state))
            value = explore(belief, total, self.s)
            if not self.direct:
                value = min(max(value, 1.0), arm.num_draft_tokens + 1.0)
                seconds = self.s.draft.seconds(
                    arm.drafter, state.bucket, arm.num_draft_tokens  # type: ignore[arg-type]
                ) + self.s.forward.share(num_running, belief.mean_drafted + 1.0)
                value /= max(seconds, 1e-12)
            if value > best_score:
                best, best_score = arm, value
        return best, best_score

    def _stats(self, state: RequestState, label: str) -> est.ArmStats:
        p = self.s.params
        if p.window:
            history = state.stats.get(label, ())
            return est.window_stats(history, state.step, p.window)  # type: ignore[arg-type]
        old = state.stats.get(label, est.ArmStats())
        return est.decay(old, state.step, p.discount)  # type: ignore[arg-type]

    def _key(self, label: str, state: RequestState) -> Hashable:
        """Emitted tokens do not depend on the load; direct rewards do: per load bucket."""
        return (label, state.bucket) if self.direct else label

    def _prior(self, arm: Choice, state: RequestState) -> est.ArmPrior:
        return self.s.prior.prior(self._key(arm.label, state))

    def record(self, state: RequestState, fb: Feedback, timing: StepTiming) -> None:
        if fb.choice.drafter is None and not self.direct:
            return
        value = float(fb.num_emitted)
        if self.direct:
            goodput = fb.num_emitted / max(token_share_seconds(fb, timing), 1e-12)
            self._unit = goodput if not self._unit else self._unit + 0.01 * (goodput - self._unit)
            value = goodput / self._unit
        label, p = fb.choice.label, self.s.params
        if p.window:
            history = state.stats.setdefault(label, deque(maxlen=p.window))
            history.append((state.step, value, fb.num_drafted))  # type: ignore[attr-defined]
        else:
            old = state.stats.get(label, est.ArmStats())
            state.stats[label] = est.add(old, value, fb.num_drafted, state.step, p.discount)  # type: ignore[arg-type]
        state.tally(self._key(label, state), 1, value, value * value, fb.num_drafted)

    def default_prior(self, key: Hashable) -> est.ArmPrior:
        """Emitted tokens uniform on [1, k + 1]; direct rewards 1 +- 1 in their running unit."""
        if self.direct:
            return est.ArmPrior(1.0, 1.0, 1.0, 0.0)
        k = Choice.parse(key).num_draft_tokens  # type: ignore[arg-type]
        uniform = max(k * k / 12.0, 0.25)
        return est.ArmPrior(1.0 + k / 2.0, uniform, uniform, float(k))

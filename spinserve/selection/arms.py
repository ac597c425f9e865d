"""A request's bandit state and `spin`'s arm model: arms are drafters, each described by three
acceptance rates (`acceptance`) with Beta beliefs, and each step's k is the best for the
rates drawn. A choice is scored by expected tokens / expected seconds; `SpinPolicy` compares
the best score with not speculating.

`ArmModel` is what `SpinPolicy` needs of an arm model; `DrafterArms` is the one it ships. The
alternatives it was measured against (every drafter x k its own arm, other exploration rules,
streaks) are in ``research/selection``, which subclasses or implements these.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from spinserve.config.selection import SpinParams
from spinserve.selection import acceptance as acc
from spinserve.selection.cost import DraftCost, ForwardCost
from spinserve.selection.horizon import RemainingOutput
from spinserve.selection.policy import NO_SPECULATION, Choice, Feedback, StepTiming
from spinserve.selection.prior import ArmPrior, SharedPrior

OPTIMISTIC_RATE = 0.75
DEFAULT_PRIOR_TRIALS = 1.0
# Change detection: a CUSUM of standardized residuals with this drift, once a drafter has
# this many recent steps; variance floored so a drafter that was always right still alarms.
CHANGE_DRIFT = 0.5
CHANGE_MIN_STEPS = 3.0
CHANGE_MIN_VARIANCE = 0.25
CHANGE_MAX_Z = 3.0


@dataclass
class RequestState:
    """One request's bandit: its step count, load bucket now, and per-model statistics."""

    step: int = 0
    bucket: int = 0
    num_tokens: int = 0  # prompt + output now
    num_output_tokens: int = 0  # before this step
    num_emitted: int = 0  # by the last step observed
    seen: dict[str, int] = field(default_factory=dict)  # drafter -> num_tokens it last saw
    last_drafter: str | None = None  # the drafter of the last step (None: no speculation)
    catchup: int = 0  # tokens the drafter of the pending step had to catch up on
    cusum: dict[Hashable, tuple[float, float]] = field(default_factory=dict)  # change detection
    num_restarts: int = 0  # changes of text detected
    stats: dict[Hashable, Any] = field(default_factory=dict)  # statistics key -> statistics
    totals: dict[Hashable, list[float]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    )  # prior key -> [count, total, total_sq, drafted], undiscounted: taught to the prior

    def catchup_tokens(self, drafter: str) -> int:
        """Tokens ``drafter`` must catch up on before drafting for this request (beyond the
        last step's, which every step processes)."""
        if drafter == self.last_drafter:
            return 0
        return self.num_tokens - self.seen.get(drafter, 0)

    def chose(self, choice: Choice) -> None:
        d = choice.drafter
        self.catchup = 0 if d is None else self.catchup_tokens(d)
        if d is not None:
            self.seen[d] = self.num_tokens
        self.last_drafter = d

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
    """What all requests share: the cost lines, the output horizon, the prior, the random
    generator."""

    params: SpinParams
    forward: ForwardCost
    draft: DraftCost
    horizon: RemainingOutput
    prior: SharedPrior
    rng: random.Random

    def catchup_per_token(self, state: RequestState, drafter: str) -> float:
        """A switch to ``drafter`` costs its catch-up once; shared by the tokens the request
        is still expected to emit, each step pays it in proportion to its tokens (so the
        switch pays only if the drafter's gain over the rest of the request covers it)."""
        num_tokens = state.catchup_tokens(drafter)
        if not num_tokens:
            return 0.0
        seconds = num_tokens * self.draft.catchup(drafter)
        return seconds / self.horizon.remaining(state.num_output_tokens)


class ArmModel(Protocol):
    """What `SpinPolicy` asks of an arm model: a fresh request's state, the best choice for
    a request now (drawn or, without ``explore``, by posterior means) with its score in
    tokens/s, and learning from a step's outcome."""

    drafters: list[str]

    def __init__(self, drafters: Sequence[str], shared: Shared) -> None: ...

    def new_state(self) -> RequestState: ...

    def best(
        self, state: RequestState, num_running: int, explore: bool = True
    ) -> tuple[Choice, float]: ...

    def record(self, state: RequestState, fb: Feedback, timing: StepTiming) -> None: ...

    @staticmethod
    def default_prior(params: SpinParams) -> Callable[[Hashable], ArmPrior]: ...


def beta_pseudo_counts(prior: ArmPrior) -> tuple[float, float]:
    """A rate's prior as (successes, failures) pseudo-counts: noise / spread trials."""
    pseudo = prior.noise / prior.spread
    return prior.mean * pseudo, (1.0 - prior.mean) * pseudo


def _per_step(counts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(trials, successes) per rate, the later-token trials weighed as at most one per step
    that reached them: tokens of one draft pass or fail together (a copied run), so a step
    is one observation, not k; counted per token, the later rate of a stretch long gone
    would outweigh the few steps since.

    >>> _per_step([(10, 8), (8, 6), (30, 27)])
    [(10, 8), (8, 6), (6, 5.4)]
    """
    (pt, ps), (ft, fs), (lt, ls) = counts
    if lt > fs > 0:
        ls, lt = ls * fs / lt, fs
    return [(pt, ps), (ft, fs), (lt, ls)]


def cusum(high: float, low: float, z: float, drift: float) -> tuple[float, float]:
    """Two-sided CUSUM of standardized residuals ``z``: sums that grow while the outcomes
    run above (``high``) or below (``low``) the prediction by more than ``drift``.

    >>> cusum(0.0, 0.0, 2.0, 0.5), cusum(1.5, 0.0, -3.0, 0.5)
    ((1.5, 0.0), (0.0, 2.5))
    """
    return max(0.0, high + z - drift), max(0.0, low - z - drift)


class DrafterArms:
    """Arms are drafters; each step's k is the best for the drafter's (explored) rates."""

    def __init__(self, drafters: Sequence[str], shared: Shared) -> None:
        self.drafters = list(drafters)  # the drafters it chooses among
        self.lengths = sorted(set(shared.params.draft_lengths))
        self.s = shared
        self._fill: dict[str, float] = {}  # drafter -> moving average of drafted / asked

    def new_state(self) -> RequestState:
        return RequestState()

    def best(
        self, state: RequestState, num_running: int, explore: bool = True
    ) -> tuple[Choice, float]:
        """The drafter and k of the highest drawn goodput, or without ``explore`` of the
        highest posterior-mean goodput (the cost terms of `Shared.seconds`, hoisted out of
        the loop over k: this runs per request per step)."""
        best, best_score = NO_SPECULATION, -1.0
        keys = {d: self.key(state, d) for d in self.drafters}
        stats = {d: self._stats(state, keys[d]) for d in self.drafters}
        total = sum(s.trials[0] for s in stats.values()) + 1.0
        forward = self.s.forward
        alone = forward.share(num_running, 1.0)  # a step with no draft (none proposed)
        lengths = self.draft_lengths(state)
        for drafter in self.drafters:
            rates = self._rates(keys[drafter], stats[drafter], total, explore)
            draft_fixed, per_draft = self.s.draft.line(drafter, state.bucket)
            catchup = self.s.catchup_per_token(state, drafter)
            for k in lengths:
                emitted = rates.expected_emitted(k)
                # the forward's expected share over proposing or not: a lone sequence's
                # curve is not a line, so the share of the mean draft would underprice it
                drafted = forward.share(num_running, 1.0 + rates.drafted_when_proposed(k))
                share = rates.propose * drafted + (1.0 - rates.propose) * alone
                seconds = share + draft_fixed + per_draft * k
                score = emitted / max(seconds + catchup * emitted, 1e-12)
                if score > best_score:
                    best, best_score = Choice(drafter, k), score
        return best, best_score

    def key(self, state: RequestState, drafter: str) -> Hashable:
        """Where a step of ``drafter`` for this request is learned from and counted: its own
        statistics (a research variant keeps the steps after a whole pass apart)."""
        return drafter

    def draft_lengths(self, state: RequestState) -> list[int]:
        """The k this request's next step may ask for: every configured one."""
        return self.lengths

    def draw_rate(self, a: float, b: float, total: float) -> float:
        """A rate drawn from its Beta(a, b) belief, the spread narrowed to ``exploration``
        (Thompson sampling). ``total``, the request's steps of all drafters, is for rules
        that grow optimism with time (research/selection/variants.py)."""
        widen = max(self.s.params.exploration, 1e-3) ** 2
        return self.s.rng.betavariate(max(a, 1e-3) / widen, max(b, 1e-3) / widen)

    def _stats(self, state: RequestState, key: Hashable) -> acc.DrafterStats:
        old = state.stats.get(key, acc.DrafterStats())
        return acc.decay(old, state.step, self.s.params.discount)

    def _rates(
        self,
        key: Hashable,
        stats: acc.DrafterStats,
        total: float,
        explore: bool = True,
    ) -> acc.Rates:
        """Each rate's belief (the shared prior updated with the request's discounted steps),
        drawn from by the exploration rule, or without ``explore`` its mean."""
        drafter = key[0] if isinstance(key, tuple) else key
        recent = _per_step(list(zip(stats.trials, stats.successes, strict=True)))
        values = []
        for i, name in enumerate(acc.RATES):
            a, b = beta_pseudo_counts(self.s.prior.prior((key, name)))
            n, won = recent[i]
            a, b = a + won, b + n - won
            values.append(self.draw_rate(a, b, total) if explore else a / (a + b))
        global_fill = self._fill.get(drafter, 1.0)
        fill = (stats.filled + global_fill) / (stats.trials[1] + 1.0)
        return acc.Rates(*values, fill=fill)

    def _detect_change(self, state: RequestState, key: Hashable, fb: Feedback) -> None:
        """CUSUM of the played drafter's emitted tokens against its prediction; on an alarm
        the text has changed under the request (a new stretch), so every drafter's recent
        statistics of this request are dropped and the arms are explored afresh."""
        threshold = self.s.params.change_threshold
        k = fb.choice.num_draft_tokens
        if not threshold:
            return
        stats = self._stats(state, key)
        if stats.trials[0] < CHANGE_MIN_STEPS:
            return
        rates = self._rates(key, stats, 1.0, explore=False)
        sd = max(rates.variance_emitted(k), CHANGE_MIN_VARIANCE) ** 0.5
        z = (fb.num_emitted - rates.expected_emitted(k)) / sd
        z = min(max(z, -CHANGE_MAX_Z), CHANGE_MAX_Z)  # one lucky long run is not a change
        high, low = cusum(*state.cusum.get(key, (0.0, 0.0)), z, CHANGE_DRIFT)
        state.cusum[key] = (high, low)
        if max(high, low) > threshold:
            for name, old in state.stats.items():
                state.stats[name] = acc.scale(old, 0.0, state.step)
            state.cusum.clear()
            state.num_restarts += 1

    def record(self, state: RequestState, fb: Feedback, timing: StepTiming) -> None:
        if fb.choice.drafter is None:
            return  # one token, one forward share: nothing to learn
        d, k = fb.choice.drafter, fb.choice.num_draft_tokens
        key = self.key(state, d)
        self._detect_change(state, key, fb)
        old = state.stats.get(key, acc.DrafterStats())
        state.stats[key] = acc.record(
            old,
            k,
            fb.num_drafted,
            fb.num_accepted,
            state.step,
            self.s.params.discount,
        )
        trials, successes = acc.outcome_counts(fb.num_drafted, fb.num_accepted)
        for name, n, won in zip(acc.RATES, trials, successes, strict=True):
            if n:
                state.tally((key, name), n, won, won)
        if fb.num_drafted:
            old_fill = self._fill.get(d, 1.0)
            self._fill[d] = old_fill + 0.05 * (fb.num_drafted / k - old_fill)

    @staticmethod
    def default_prior(params: SpinParams) -> Callable[[Hashable], ArmPrior]:
        """A rate nobody measured yet: optimistic (3/4, as sure as one trial), so that every
        drafter is tried early on. A pessimistic start can bury an expensive drafter after
        one unlucky step, for every request after (measured: with 1/2 as sure as three
        trials, the 0.5B was never chosen again on code, its best text)."""
        mean = OPTIMISTIC_RATE
        noise = mean * (1.0 - mean)
        prior = ArmPrior(mean, noise / DEFAULT_PRIOR_TRIALS, noise, 0.0)
        return lambda key: prior

"""What one drafter's steps say about a request, as three rates, and what they predict for any
draft length k. Pure functions over discounted counts.

A step that asks a drafter for k tokens goes: the drafter proposes something (rate
``propose``: prompt lookup often has no match) of ``fill`` * k tokens on average (a suffix
index stops early on ambiguous continuations), the first draft token passes (rate ``first``)
and each later one passes given the one before did (rate ``later``). Keeping the first token
apart matters: prompt lookup either finds the text being copied (then nearly every later
token passes) or not. So one step with k = 8 also tells what k = 2 would have done, and the
best k follows from the rates and the cost of a token instead of being one more arm to try::

    E[accepted | k] = propose * first * (1 - later^m) / (1 - later),  m = fill * k
    E[drafted | k]  = propose * m
"""

from __future__ import annotations

from dataclasses import dataclass

RATES = ("propose", "first", "later")


@dataclass(frozen=True)
class DrafterStats:
    """Discounted trial and success counts of one drafter on one request, as of ``step``.

    >>> s = record(DrafterStats(), asked=4, drafted=4, accepted=2, step=1, gamma=1.0)
    >>> s.trials, s.successes, s.fill
    ((1.0, 1.0, 2.0), (1.0, 1.0, 1.0), 1.0)
    """

    trials: tuple[float, float, float] = (0.0, 0.0, 0.0)  # per rate in RATES
    successes: tuple[float, float, float] = (0.0, 0.0, 0.0)
    filled: float = 0.0  # sum of drafted / asked over proposing steps
    step: int = 0

    @property
    def fill(self) -> float:
        return self.filled / self.trials[1] if self.trials[1] else 1.0


def decay(stats: DrafterStats, step: int, gamma: float) -> DrafterStats:
    """``stats`` as seen from a later ``step``: each observation weighs gamma per step."""
    return scale(stats, 1.0 if gamma == 1.0 else gamma ** (step - stats.step), step)


def scale(stats: DrafterStats, f: float, step: int) -> DrafterStats:
    """Every count times ``f`` (0: forget all), as of ``step``."""
    return DrafterStats(
        tuple(f * x for x in stats.trials),  # type: ignore[arg-type]
        tuple(f * x for x in stats.successes),  # type: ignore[arg-type]
        f * stats.filled,
        step,
    )


def outcome_counts(
    drafted: int, accepted: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(trials, successes) per rate of one step.

    >>> outcome_counts(0, 0), outcome_counts(4, 0), outcome_counts(4, 2), outcome_counts(4, 4)
    (((1, 0, 0), (0, 0, 0)), ((1, 1, 0), (1, 0, 0)), ((1, 1, 2), (1, 1, 1)), ((1, 1, 3), (1, 1, 3)))
    """
    if drafted == 0:
        return (1, 0, 0), (0, 0, 0)
    if accepted == 0:
        return (1, 1, 0), (1, 0, 0)
    later_trials = min(drafted, accepted + 1) - 1
    return (1, 1, later_trials), (1, 1, accepted - 1)


def record(
    stats: DrafterStats, asked: int, drafted: int, accepted: int, step: int, gamma: float
) -> DrafterStats:
    """One more step (``asked`` draft tokens, ``drafted`` proposed, ``accepted`` kept)."""
    s = decay(stats, step, gamma)
    trials, successes = outcome_counts(drafted, accepted)
    filled = drafted / asked if drafted else 0.0
    return DrafterStats(
        tuple(a + b for a, b in zip(s.trials, trials, strict=True)),  # type: ignore[arg-type]
        tuple(a + b for a, b in zip(s.successes, successes, strict=True)),  # type: ignore[arg-type]
        s.filled + filled,
        step,
    )


@dataclass(frozen=True)
class Rates:
    propose: float
    first: float
    later: float
    fill: float = 1.0

    def drafted_when_proposed(self, k: int) -> float:
        return min(k, max(1.0, self.fill * k))

    def expected_drafted(self, k: int) -> float:
        return self.propose * self.drafted_when_proposed(k)

    def variance_emitted(self, k: int) -> float:
        """Variance of the tokens a step emits (whole positions only: m rounded).

        >>> Rates(1.0, 1.0, 1.0).variance_emitted(4), Rates(0.0, 0.5, 0.5).variance_emitted(4)
        (0.0, 0.0)
        """
        m = max(1, round(min(k, max(1.0, self.fill * k))))
        tail = [self.propose * self.first * self.later**j for j in range(m)]  # P(X > j)
        mean = sum(tail)
        second = sum((2 * j + 1) * t for j, t in enumerate(tail))
        return max(second - mean * mean, 0.0)

    def expected_emitted(self, k: int) -> float:
        """1 (the recovered or bonus token) + expected accepted draft tokens.

        >>> round(Rates(1.0, 0.5, 0.5).expected_emitted(3), 4)  # 1 + .5 + .25 + .125
        1.875
        """
        m = min(k, max(1.0, self.fill * k))
        a = self.later
        run = m if a >= 1.0 else (1.0 - a**m) / (1.0 - a)
        return 1.0 + self.propose * self.first * run

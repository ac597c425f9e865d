"""The Gaussian bandit arithmetic of `flat_arms`, as pure functions: forgetting statistics, the
posterior of an arm's mean given a shared prior (`spinserve.selection.prior.ArmPrior`), and
the exploration rules that turn a belief into a score.

An arm's *value* is what one step of it yielded (tokens emitted, or a direct reward). Forgetting is
either a discount (every step multiplies all of a request's old observations by ``gamma``,
played arm or not, as in discounted UCB) or a sliding window over the request's last steps.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from spinserve.selection.prior import ArmPrior


@dataclass(frozen=True)
class ArmStats:
    """Weighted sums of one arm's observations, discounted to request step ``step``.

    >>> s = add(add(ArmStats(), 3.0, 4, step=1, gamma=0.5), 1.0, 4, step=2, gamma=0.5)
    >>> s.weight, s.mean
    (1.5, 1.6666666666666667)
    """

    weight: float = 0.0
    total: float = 0.0  # sum of values
    total_sq: float = 0.0  # sum of squared values
    drafted: float = 0.0  # sum of num_drafted
    step: int = 0

    @property
    def mean(self) -> float:
        return self.total / self.weight if self.weight else 0.0

    @property
    def mean_drafted(self) -> float:
        return self.drafted / self.weight if self.weight else 0.0


def decay(stats: ArmStats, step: int, gamma: float) -> ArmStats:
    """``stats`` as seen from a later ``step``: every observation weighs gamma per step."""
    if step == stats.step or gamma == 1.0:
        return ArmStats(stats.weight, stats.total, stats.total_sq, stats.drafted, step)
    f = gamma ** (step - stats.step)
    return ArmStats(f * stats.weight, f * stats.total, f * stats.total_sq, f * stats.drafted, step)


def add(stats: ArmStats, value: float, num_drafted: int, step: int, gamma: float) -> ArmStats:
    """One more observation at ``step``, older ones discounted to it."""
    s = decay(stats, step, gamma)
    return ArmStats(
        s.weight + 1.0,
        s.total + value,
        s.total_sq + value * value,
        s.drafted + num_drafted,
        step,
    )


def window_stats(history: Iterable[tuple[int, float, int]], step: int, window: int) -> ArmStats:
    """Undiscounted sums of the observations ``(step, value, num_drafted)`` of the last
    ``window`` steps (sliding-window UCB's statistics)."""
    w = t = tsq = d = 0.0
    for at, value, drafted in history:
        if step - at < window:
            w, t, tsq, d = w + 1, t + value, tsq + value * value, d + drafted
    return ArmStats(w, t, tsq, d, step)


@dataclass(frozen=True)
class Belief:
    """Posterior of an arm's mean value for one request; ``count``: its own weight."""

    mean: float
    var: float
    mean_drafted: float
    count: float


def posterior(own: ArmStats, prior: ArmPrior) -> Belief:
    """Normal prior N(mean, spread) on the request's mean, normal steps of variance noise.

    >>> b = posterior(ArmStats(weight=2.0, total=8.0), ArmPrior(2.0, 1.0, 2.0, 4.0))
    >>> round(b.mean, 3), round(b.var, 3)
    (3.0, 0.5)
    """
    precision = 1.0 / prior.spread + own.weight / prior.noise
    mean = (prior.mean / prior.spread + own.total / prior.noise) / precision
    pseudo = prior.noise / prior.spread  # the prior's weight in observations
    drafted = (pseudo * prior.mean_drafted + own.drafted) / (pseudo + own.weight)
    return Belief(mean, 1.0 / precision, drafted, own.weight)


# --- exploration rules: belief -> the value to rank the arm by -------------------------------


def thompson_value(belief: Belief, rng: random.Random, scale: float) -> float:
    """A draw from the posterior (its spread widened by ``scale``)."""
    return rng.gauss(belief.mean, scale * math.sqrt(belief.var))


def ucb_value(belief: Belief, total_count: float, c: float) -> float:
    """Optimism of ``c`` posterior standard deviations times sqrt(2 ln t) (UCB1 with the prior
    as pseudo-observations; discounted counts give discounted UCB)."""
    return belief.mean + c * math.sqrt(2.0 * math.log(max(total_count, 2.0)) * belief.var)


def greedy_value(belief: Belief) -> float:
    """The posterior mean (epsilon-greedy explores separately, by a coin)."""
    return belief.mean

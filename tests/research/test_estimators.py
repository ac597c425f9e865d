"""The bandit arithmetic against spelled-out definitions."""

from __future__ import annotations

import math
import random

import pytest

from research.selection import estimators as est
from spinserve.selection.prior import ArmPrior


def test_discounted_sums_match_the_definition():
    rng = random.Random(0)
    gamma = 0.8
    stats, seen = est.ArmStats(), []
    for step in range(1, 30):
        if rng.random() < 0.5:
            value, drafted = rng.uniform(1, 5), rng.randint(0, 4)
            stats = est.add(stats, value, drafted, step, gamma)
            seen.append((step, value, drafted))
    now = 40
    stats = est.decay(stats, now, gamma)
    weights = [gamma ** (now - s) for s, _, _ in seen]
    assert stats.weight == pytest.approx(sum(weights))
    assert stats.total == pytest.approx(
        sum(w * v for w, (_, v, _) in zip(weights, seen, strict=True))
    )
    assert stats.total_sq == pytest.approx(
        sum(w * v * v for w, (_, v, _) in zip(weights, seen, strict=True))
    )
    assert stats.drafted == pytest.approx(
        sum(w * d for w, (_, _, d) in zip(weights, seen, strict=True))
    )


@pytest.mark.parametrize(
    "history, step, window, weight, total",
    [
        ([], 5, 3, 0, 0),
        ([(1, 2.0, 4), (4, 3.0, 4), (5, 1.0, 0)], 5, 3, 2, 4.0),
        ([(1, 2.0, 4), (4, 3.0, 4), (5, 1.0, 0)], 5, 10, 3, 6.0),
        ([(1, 2.0, 4)], 1, 1, 1, 2.0),
    ],
)
def test_window_stats(history, step, window, weight, total):
    stats = est.window_stats(history, step, window)
    assert (stats.weight, stats.total) == (weight, total)


def test_posterior_without_data_is_the_prior_and_with_much_data_the_mean():
    prior = ArmPrior(mean=2.0, spread=0.5, noise=1.0, mean_drafted=4.0)
    empty = est.posterior(est.ArmStats(), prior)
    assert (empty.mean, empty.var, empty.mean_drafted) == (2.0, 0.5, 4.0)
    many = est.posterior(est.ArmStats(weight=1e6, total=5e6, drafted=2e6), prior)
    assert many.mean == pytest.approx(5.0, rel=1e-5)
    assert many.mean_drafted == pytest.approx(2.0, rel=1e-5)
    assert many.var == pytest.approx(1e-6, rel=1e-3)


def test_exploration_rules():
    belief = est.Belief(mean=3.0, var=0.25, mean_drafted=0.0, count=4.0)
    assert est.greedy_value(belief) == 3.0
    assert est.ucb_value(belief, math.e**2, c=1.0) == pytest.approx(3.0 + 2.0 * 0.5)
    assert est.ucb_value(belief, 1.0, c=1.0) > 3.0  # t is at least 2: always some optimism
    rng = random.Random(1)
    draws = [est.thompson_value(belief, rng, 1.0) for _ in range(4000)]
    assert sum(draws) / len(draws) == pytest.approx(3.0, abs=0.03)
    assert math.sqrt(sum((d - 3.0) ** 2 for d in draws) / len(draws)) == pytest.approx(0.5, 0.05)
    assert est.thompson_value(belief, rng, 0.0) == 3.0

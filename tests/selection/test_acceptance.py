"""The three-rate model of a drafter's acceptance: counts per step, predictions per k."""

from __future__ import annotations

import random

import pytest

from spinserve.selection import acceptance as acc


@pytest.mark.parametrize(
    "drafted, accepted, trials, successes",
    [
        (0, 0, (1, 0, 0), (0, 0, 0)),  # nothing proposed
        (1, 0, (1, 1, 0), (1, 0, 0)),
        (1, 1, (1, 1, 0), (1, 1, 0)),  # no later token was drafted
        (5, 0, (1, 1, 0), (1, 0, 0)),
        (5, 1, (1, 1, 1), (1, 1, 0)),  # the second token was tried and rejected
        (5, 3, (1, 1, 3), (1, 1, 2)),
        (5, 5, (1, 1, 4), (1, 1, 4)),
    ],
)
def test_outcome_counts(drafted, accepted, trials, successes):
    assert acc.outcome_counts(drafted, accepted) == (trials, successes)


def test_record_discounts_and_tracks_fill():
    s = acc.DrafterStats()
    s = acc.record(s, asked=4, drafted=2, accepted=2, step=1, gamma=0.5)
    s = acc.record(s, asked=4, drafted=0, accepted=0, step=2, gamma=0.5)
    assert s.trials == (1.5, 0.5, 0.5)
    assert s.successes == (0.5, 0.5, 0.5)
    assert s.fill == pytest.approx(0.5)  # drafted 2 of 4 when it proposed
    later = acc.decay(s, 4, 0.5)
    assert later.trials == (0.375, 0.125, 0.125) and later.step == 4


def simulated_emitted(rates: acc.Rates, k: int, rng: random.Random, n: int) -> float:
    total = 0
    for _ in range(n):
        accepted = 0
        if rng.random() < rates.propose and rng.random() < rates.first:
            accepted = 1
            while accepted < k and rng.random() < rates.later:
                accepted += 1
        total += accepted + 1
    return total / n


@pytest.mark.parametrize("rates", [acc.Rates(1.0, 0.8, 0.8), acc.Rates(0.4, 0.7, 0.95)])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_expected_emitted_matches_a_simulation(rates, k):
    rng = random.Random(k)
    assert rates.expected_emitted(k) == pytest.approx(simulated_emitted(rates, k, rng, 20000), 0.02)
    assert rates.expected_drafted(k) == pytest.approx(rates.propose * k)


def test_rates_learned_from_steps_recover_the_truth():
    truth = acc.Rates(0.6, 0.7, 0.9)
    rng = random.Random(3)
    stats = acc.DrafterStats()
    for step in range(1, 3001):
        k = rng.choice([2, 4, 8])
        drafted = k if rng.random() < truth.propose else 0
        accepted = 0
        if drafted and rng.random() < truth.first:
            accepted = 1
            while accepted < drafted and rng.random() < truth.later:
                accepted += 1
        stats = acc.record(stats, k, drafted, accepted, step, gamma=1.0)
    learned = [s / t for s, t in zip(stats.successes, stats.trials, strict=True)]
    assert learned == pytest.approx([0.6, 0.7, 0.9], abs=0.03)


def test_short_drafts_lower_the_prediction():
    full, half = acc.Rates(1.0, 0.9, 0.9, fill=1.0), acc.Rates(1.0, 0.9, 0.9, fill=0.5)
    assert half.expected_emitted(8) < full.expected_emitted(8)
    assert half.expected_drafted(8) == 4.0
    assert acc.Rates(1.0, 1.0, 1.0).expected_emitted(4) == 5.0  # later = 1: no division by 0

"""The shared prior: empirical Bayes over finished requests."""

from __future__ import annotations

import random

import pytest

from spinserve.selection.prior import ArmPrior, SharedPrior

DEFAULT = ArmPrior(3.0, 1.0, 1.0, 4.0)


def learn_requests(prior: SharedPrior, means: list[float], steps: int, noise: float, seed: int):
    rng = random.Random(seed)
    for mean in means:
        values = [rng.gauss(mean, noise**0.5) for _ in range(steps)]
        prior.learn("arm", steps, sum(values), sum(v * v for v in values), 2.0 * steps)


def test_unknown_arm_gets_the_default():
    assert SharedPrior(lambda key: DEFAULT).prior("arm") == DEFAULT


def test_spread_and_noise_are_recovered():
    prior = SharedPrior(lambda key: DEFAULT, max_weight=100.0, memory=1e9)
    rng = random.Random(0)
    means = [rng.gauss(4.0, 0.5) for _ in range(400)]  # spread 0.25 across requests
    learn_requests(prior, means, steps=20, noise=1.0, seed=1)
    p = prior.prior("arm")
    assert p.mean == pytest.approx(4.0, abs=0.08)
    assert p.noise == pytest.approx(1.0, rel=0.05)
    assert p.spread == pytest.approx(0.25, rel=0.25)
    assert p.mean_drafted == pytest.approx(2.0, rel=0.01)


def test_identical_requests_give_a_prior_capped_at_max_weight():
    prior = SharedPrior(lambda key: DEFAULT, max_weight=4.0)
    learn_requests(prior, [2.0] * 100, steps=20, noise=1.0, seed=2)
    p = prior.prior("arm")
    assert p.noise / p.spread == pytest.approx(4.0)


def test_old_requests_fade():
    prior = SharedPrior(lambda key: DEFAULT, memory=20.0)
    learn_requests(prior, [5.0] * 100, steps=10, noise=0.1, seed=3)
    learn_requests(prior, [2.0] * 100, steps=10, noise=0.1, seed=4)
    assert prior.prior("arm").mean == pytest.approx(2.0, abs=0.1)  # the default weighs 1/20


@pytest.mark.parametrize("kwargs", [dict(max_weight=0.0), dict(memory=0.5)])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        SharedPrior(lambda key: DEFAULT, **kwargs)


def test_a_shared_prior_copies_without_its_lock():
    """Benchmarks snapshot a policy with deepcopy; the copy learns on its own."""
    import copy

    prior = SharedPrior(lambda key: ArmPrior(3.0, 1.0, 1.0, 4.0))
    prior.learn("ngram@4", count=2, total=3.0, total_sq=5.0, drafted=4.0)
    twin = copy.deepcopy(prior)
    twin.learn("ngram@4", count=2, total=3.0, total_sq=5.0, drafted=4.0)
    assert twin.prior("ngram@4").mean != prior.prior("ngram@4").mean

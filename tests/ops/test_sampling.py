"""Sampling: the filtered distribution (tables on hand-made logits) and seeded draws."""

from __future__ import annotations

import pytest
import torch

from spinserve.ops.sampling import draw, greedy, probabilities

PROBS = [0.5, 0.3, 0.15, 0.05]


def filtered(
    probs: list[float], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """probabilities() of one row whose unfiltered distribution is ``probs``."""
    logits = torch.tensor([probs]).log()
    return probabilities(
        logits,
        torch.tensor([temperature]),
        torch.tensor([top_k], dtype=torch.int64),
        torch.tensor([top_p]),
    )[0]


def renormalized(probs: list[float], keep: int) -> list[float]:
    """The first ``keep`` entries of ``probs`` rescaled to sum to 1, zeros after."""
    mass = sum(probs[:keep])
    return [p / mass if i < keep else 0.0 for i, p in enumerate(probs)]


@pytest.mark.parametrize(
    ("top_p", "num_kept"),
    [
        (0.1, 1),  # always at least one token
        (0.45, 1),
        (0.5, 1),  # 0.5 alone reaches 0.5
        (0.55, 2),
        (0.7, 2),
        (0.79, 2),
        (0.85, 3),
        (0.9, 3),
        (0.96, 4),
        (1.0, 4),  # off
    ],
)
def test_top_p(top_p, num_kept):
    torch.testing.assert_close(
        filtered(PROBS, top_p=top_p), torch.tensor(renormalized(PROBS, num_kept))
    )


@pytest.mark.parametrize(
    ("top_k", "num_kept"),
    [(0, 4), (1, 1), (2, 2), (3, 3), (4, 4), (10, 4)],  # 0 = off; beyond vocab = all
)
def test_top_k(top_k, num_kept):
    torch.testing.assert_close(
        filtered(PROBS, top_k=top_k), torch.tensor(renormalized(PROBS, num_kept))
    )


@pytest.mark.parametrize(
    ("top_k", "top_p", "num_kept"),
    [
        # top-p measures mass after top-k: [0.5, 0.3] -> [0.625, 0.375], and 0.625 >= 0.6.
        (2, 0.6, 1),
        (2, 0.7, 2),
        (3, 0.9, 3),  # [0.526, 0.316, 0.158]: 0.842 < 0.9 so all three stay
        (3, 0.8, 2),
        (1, 1.0, 1),
        (4, 0.55, 2),
    ],
)
def test_top_k_then_top_p(top_k, top_p, num_kept):
    torch.testing.assert_close(
        filtered(PROBS, top_k=top_k, top_p=top_p), torch.tensor(renormalized(PROBS, num_kept))
    )


@pytest.mark.parametrize("temperature", [0.25, 0.5, 1.0, 2.0, 10.0])
def test_temperature_scales_logits(temperature):
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]])
    got = probabilities(
        logits,
        torch.tensor([temperature]),
        torch.zeros(1, dtype=torch.int64),
        torch.ones(1),
    )
    torch.testing.assert_close(got, torch.softmax(logits / temperature, dim=-1))


@pytest.mark.parametrize(
    ("temperature", "top_p", "num_kept"),
    [
        (0.5, 0.6, 1),  # sharper: [0.685, 0.247, ...]
        (1.0, 0.6, 2),
        (3.0, 0.6, 2),  # flatter: [0.336, 0.283, 0.225, 0.156]
        (3.0, 0.7, 3),
        (1.0, 0.7, 2),
    ],
)
def test_temperature_applies_before_top_p(temperature, top_p, num_kept):
    got = filtered(PROBS, temperature=temperature, top_p=top_p)
    assert int((got > 0).sum()) == num_kept
    assert float(got.sum()) == pytest.approx(1.0)


ROW_SETTINGS = [  # (temperature, top_k, top_p)
    (1.0, 0, 1.0),
    (1.0, 2, 1.0),
    (1.0, 0, 0.55),
    (0.5, 0, 0.6),
    (2.0, 3, 0.9),
    (1.0, 1, 1.0),
]


def test_rows_with_different_settings_in_one_call():
    logits = torch.tensor([PROBS] * len(ROW_SETTINGS)).log()
    temperature, top_k, top_p = zip(*ROW_SETTINGS, strict=True)
    got = probabilities(
        logits,
        torch.tensor(temperature),
        torch.tensor(top_k, dtype=torch.int64),
        torch.tensor(top_p),
    )
    expected = torch.stack([filtered(PROBS, t, k, p) for t, k, p in ROW_SETTINGS])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("other_top_p", "top_k"),
    [pytest.param(0.5, 0, id="batched-with-top-p-row"), pytest.param(1.0, 2, id="top-k-only")],
)
def test_top_p_off_keeps_a_tiny_tail(other_top_p, top_k):
    logits = torch.tensor([[0.0, -20.0, -30.0]] * 2)  # p(token 1) ~ 2e-9
    got = probabilities(
        logits,
        torch.ones(2),
        torch.tensor([top_k, 0], dtype=torch.int64),
        torch.tensor([1.0, other_top_p]),
    )
    assert float(got[0, 1]) > 0.0


@pytest.mark.parametrize(
    ("logits", "expected"),
    [
        ([[0.1, 0.9, 0.3]], [1]),
        ([[5.0, -1.0], [-1.0, 5.0]], [0, 1]),
        ([[1.0, 3.0, 3.0]], [1]),  # ties: the first maximum
        ([[-5.0, -4.0, -6.0]], [1]),
    ],
)
def test_greedy(logits, expected):
    assert greedy(torch.tensor(logits)).tolist() == expected


def test_draw_matches_the_distribution():
    """Chi-square goodness of fit of 20,000 seeded draws, at the 0.999 level."""
    probs = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15])
    num_draws = 20_000
    gen = torch.Generator().manual_seed(1234)
    tokens = draw(probs.expand(num_draws, -1), [gen] * num_draws)
    observed = torch.bincount(tokens, minlength=5).double()
    expected = probs.double() * num_draws
    chi_square = float(((observed - expected) ** 2 / expected).sum())
    assert chi_square < 18.47  # chi-square 0.999 quantile, 4 degrees of freedom


def test_draw_never_picks_filtered_tokens():
    probs = filtered(PROBS, top_k=2)[None].expand(2000, -1)
    gen = torch.Generator().manual_seed(0)
    assert set(draw(probs, [gen] * 2000).tolist()) == {0, 1}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_seed_same_draws_whatever_the_other_rows():
    """Row "me" (seed 7) draws the same tokens alone or batched with other rows and seeds."""
    mine = torch.tensor(PROBS)
    other = torch.tensor([0.05, 0.05, 0.1, 0.8])
    num_steps = 200

    alone_gen = seeded(7)
    alone = [int(draw(mine[None], [alone_gen])[0]) for _ in range(num_steps)]

    batch_gens = [seeded(99), seeded(7), seeded(3)]
    batched = []
    for _ in range(num_steps):
        tokens = draw(torch.stack([other, mine, other]), batch_gens)
        batched.append(int(tokens[1]))
    assert batched == alone
    assert len(set(alone)) > 1  # the test would be vacuous if every draw were the same


def test_different_seeds_differ():
    probs = torch.tensor(PROBS)[None].expand(100, -1)
    a = draw(probs, [seeded(1)] * 100)
    b = draw(probs, [seeded(2)] * 100)
    assert not torch.equal(a, b)

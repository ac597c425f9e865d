"""The step gate's pieces: labels of a draft, the best draft for given pass chances, and a
predictor that learns what a drafter's scores are worth."""

from __future__ import annotations

import math
import random

import pytest

from spinserve.selection.step_gate import (
    Lookup,
    RequestMemory,
    StepPredictor,
    best_draft,
    labels,
)

FLAT = {n: 1.0 + 0.05 * (n - 1) for n in range(1, 20)}.__getitem__  # 5% of a decode a row


@pytest.mark.parametrize(
    ("draft", "emitted", "expected"),
    [
        ([5, 7, 2], [5, 7, 9], [(1, 1.0), (2, 1.0), (3, 0.0)]),
        ([5, 7, 2], [5, 7, 2, 4], [(1, 1.0), (2, 1.0), (3, 1.0)]),
        ([5, 7], [4], [(1, 0.0)]),
        ([5, 7, 8], [5], [(1, 1.0)]),  # depth 2 is not decided by one emitted token
        ([], [1, 2], []),
    ],
)
def test_labels(draft, emitted, expected):
    assert labels(draft, emitted) == expected


@pytest.mark.parametrize(
    ("options", "cost", "expected"),
    [
        ({}, FLAT, (None, 0)),
        ({"a": [0.9, 0.9, 0.9, 0.9]}, FLAT, ("a", 4)),
        ({"a": [0.02]}, FLAT, (None, 0)),  # 1.02 tokens for 1.05 decodes
        ({"a": [0.9, 0.9], "b": [0.95, 0.95, 0.95]}, FLAT, ("b", 3)),
        # rows that cost a decode each (a busy step): only sure drafts pay
        ({"a": [0.9, 0.1]}, lambda n: float(n), (None, 0)),
        ({"a": [0.99, 0.99]}, lambda n: 0.5 + 0.5 * n, ("a", 2)),
    ],
)
def test_best_draft(options, cost, expected):
    assert best_draft(options, cost)[:2] == expected


def _lookup(score: float, n: int = 4, drafter: str = "suffix") -> Lookup:
    return Lookup(drafter, tuple(range(1, n + 1)), tuple(score**j for j in range(1, n + 1)))


def test_the_predictor_learns_what_a_score_is_worth():
    """Drafts whose first score is high pass; low ones fail. After learning from both, the
    predicted first-token chance separates them, and is calibrated to the rates seen."""
    rng = random.Random(0)
    predictor, memory = StepPredictor(), RequestMemory()
    for _ in range(3000):
        score = rng.choice([0.3, 0.95])
        passes = rng.random() < (0.1 if score < 0.5 else 0.8)
        lookup = _lookup(score, n=1)
        predictor.learn(lookup, [], memory, [1 if passes else 99])
    low = predictor.pass_probs(_lookup(0.3, n=1), [], memory)[0]
    high = predictor.pass_probs(_lookup(0.95, n=1), [], memory)[0]
    assert low == pytest.approx(0.1, abs=0.1)  # a step size kept for following change: noisy
    assert high == pytest.approx(0.8, abs=0.1)


def test_agreement_between_lookups_is_a_feature():
    rng = random.Random(1)
    predictor, memory = StepPredictor(), RequestMemory()
    for _ in range(3000):
        agree = rng.random() < 0.5
        mine = _lookup(0.6, n=1, drafter="ngram")
        other = Lookup("suffix", (1 if agree else 2,), (0.6,))
        passes = rng.random() < (0.9 if agree else 0.2)
        predictor.learn(mine, [other], memory, [1 if passes else 7])
    agreeing = predictor.pass_probs(
        _lookup(0.6, 1, "ngram"), [Lookup("suffix", (1,), (0.6,))], memory
    )
    differing = predictor.pass_probs(
        _lookup(0.6, 1, "ngram"), [Lookup("suffix", (2,), (0.6,))], memory
    )
    assert agreeing[0] > 0.75 and differing[0] < 0.35


def test_memory_tracks_the_last_step_and_first_passes():
    memory = RequestMemory()
    memory.observed(4, 4)
    assert memory.last_all_passed == 1.0 and memory.last_accepted_fraction == 1.0
    memory.observed(4, 1)
    assert memory.last_all_passed == 0.0 and memory.last_accepted_fraction == 0.25
    memory.observed(0, 0)  # no draft: nothing learned
    assert memory.last_accepted_fraction == 0.25
    for _ in range(30):
        memory.learned([_lookup(0.5, 2)], [1, 2])
    assert memory.first_pass["suffix"] > 0.95


def test_spin_gate_respects_spins_load_check():
    from spinserve.selection.policy import NO_SPECULATION, Choice
    from spinserve.selection.spin import SpinPolicy

    spin = SpinPolicy(["ngram", "suffix"])
    sure = [Lookup("suffix", tuple(range(1, 9)), (0.99,) * 8)]
    alone = spin.gate("a", sure, NO_SPECULATION, num_running=1)
    assert alone.drafter == "suffix" and alone.num_draft_tokens == 8  # rows look free here
    assert spin.gate("b", sure, NO_SPECULATION, num_running=4) == NO_SPECULATION
    loaded = spin.gate("c", sure, Choice("suffix", 2), num_running=4)
    assert loaded.drafter == "suffix" and loaded.num_draft_tokens == 4  # spin's longest k


@pytest.mark.parametrize("seed", range(5))
def test_predictions_beat_a_constant_on_a_weak_signal(seed):
    """Scored before each update (as served), the predictions must lose less than the best
    constant where the score says little (pass chance 0.35 to 0.65): a step size that
    chases single outcomes does not (the start of 0.2 lost in 2 of these 5 streams)."""
    rng = random.Random(seed)
    predictor, memory = StepPredictor(), RequestMemory()
    loss, outcomes = 0.0, []
    for _ in range(1500):
        score = rng.choice([0.3, 0.6, 0.9])
        lookup = Lookup("suffix", (1,), (score,))
        p = predictor.pass_probs(lookup, [], memory)[0]
        passes = rng.random() < 0.2 + 0.5 * score
        loss -= math.log(p if passes else 1 - p)
        outcomes.append(passes)
        predictor.learn(lookup, [], memory, [1 if passes else 9])
    rate = sum(outcomes) / len(outcomes)
    constant = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert loss / len(outcomes) < constant

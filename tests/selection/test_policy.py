"""The messages of the selection protocol: validation and the label round trip."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import spinserve.selection
from spinserve.selection.policy import (
    NO_SPECULATION,
    Choice,
    Feedback,
    LoadView,
    StepTiming,
)


def test_doctests_of_every_selection_module():
    for info in pkgutil.iter_modules(spinserve.selection.__path__):
        module = importlib.import_module(f"spinserve.selection.{info.name}")
        assert doctest.testmod(module).failed == 0, info.name


@pytest.mark.parametrize(
    "label, choice",
    [
        ("none", NO_SPECULATION),
        ("ngram@4", Choice("ngram", 4)),
        ("qwen2.5-coder-0.5b-instruct@16", Choice("qwen2.5-coder-0.5b-instruct", 16)),
        ("/models/a@b.gguf@2", Choice("/models/a@b.gguf", 2)),
    ],
)
def test_label_round_trip(label, choice):
    assert choice.label == label
    assert Choice.parse(label) == choice


@pytest.mark.parametrize("label", ["", "ngram", "ngram@", "@4", "ngram@x", "ngram@0", "none@4"])
def test_bad_labels(label):
    with pytest.raises(ValueError):
        Choice.parse(label)


@pytest.mark.parametrize(
    "drafter, k, message",
    [
        (None, 4, "num_draft_tokens = 0"),
        ("ngram", 0, r"\[1, 16\]"),
        ("ngram", 17, r"\[1, 16\]"),
        ("none", 4, "NO_SPECULATION"),
        ("", 4, "NO_SPECULATION"),
    ],
)
def test_bad_choices(drafter, k, message):
    with pytest.raises(ValueError, match=message):
        Choice(drafter, k)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Feedback("r", Choice("ngram", 4), 2, 3, 0.0),  # accepted > drafted
        lambda: Feedback("r", Choice("ngram", 4), 2, -1, 0.0),
        lambda: Feedback("r", Choice("ngram", 4), 2, 1, -0.1),
        lambda: LoadView(0),
        lambda: LoadView(1, -1),
        lambda: StepTiming(-1.0, 4, 1),
        lambda: StepTiming(1.0, 0, 1),
        lambda: StepTiming(1.0, 4, 0),
    ],
)
def test_bad_messages(make):
    with pytest.raises(ValueError):
        make()


def test_feedback_counts():
    fb = Feedback("r", Choice("ngram", 4), num_drafted=3, num_accepted=2, draft_seconds=0.0)
    assert (fb.num_emitted, fb.num_verified_tokens) == (3, 4)

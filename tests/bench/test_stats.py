"""Summaries and comparisons on hand-made request records."""

from __future__ import annotations

import math

import pytest

from spinserve.bench.client import RequestRecord
from spinserve.bench.stats import Run, compare, percentile, summaries, summarize


@pytest.mark.parametrize(
    "values, q, expected",
    [([1.0], 50, 1.0), ([1, 2, 3, 4], 50, 2.5), ([1, 2, 3, 4], 100, 4), ([0, 10], 90, 9.0)],
)
def test_percentile_interpolates_like_numpy(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_nan():
    assert math.isnan(percentile([], 50))


def record(index, category="a", tokens=10, ttft=0.1, e2e=1.0, text="t", error=None):
    return RequestRecord(
        "cfg", index, str(index), category, "concurrency=1", 0.0, text, tokens, 5, ttft, e2e,
        [0.1] * (tokens - 1), error,
    )  # fmt: skip


def test_summary_counts_only_successful_requests_and_divides_by_busy_time():
    run = Run("cfg", "concurrency=1", 2.0, (record(0), record(1, "b", 30), record(2, error="x")))
    overall = summarize(run)
    assert (overall.num_requests, overall.num_failed) == (3, 1)
    assert overall.requests_per_s == 1.0 and overall.output_tokens_per_s == 20.0
    assert overall.ttft[50] == pytest.approx(0.1) and overall.itl[99] == pytest.approx(0.1)
    assert summarize(run, "b").output_tokens_per_s == 15.0
    assert [s.category for s in summaries([run])] == ["all", "a", "b"]


def test_compare_reports_ratios_and_identical_texts():
    base = Run("a", "concurrency=1", 2.0, (record(0, text="x"), record(1, text="y")))
    other = Run(
        "b", "concurrency=1", 1.0,
        (record(0, text="x", ttft=0.05), record(1, text="z", ttft=0.05)),
    )  # fmt: skip
    (c,) = compare([base, other])
    assert (c.config, c.baseline) == ("b", "a")
    assert c.tokens_per_s_ratio == pytest.approx(2.0)
    assert c.ttft_p50_ratio == pytest.approx(0.5)
    assert (c.num_identical, c.num_compared) == (1, 2)

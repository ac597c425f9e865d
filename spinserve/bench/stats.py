"""Summaries of request records: pure functions, no I/O.

A *run* is every request of one configuration at one load (a concurrency or a request rate).
Its rates divide by the run's busy time -- the wall time during which that configuration had
requests in flight -- so configurations measured in alternating rounds are each charged only
for their own rounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from spinserve.bench.client import RequestRecord

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Run:
    config: str
    load: str  # "concurrency=4" or "rate=2.0"
    busy_s: float
    records: tuple[RequestRecord, ...]


@dataclass(frozen=True)
class Summary:
    config: str
    load: str
    category: str
    num_requests: int
    num_failed: int
    requests_per_s: float
    output_tokens_per_s: float
    ttft: dict[int, float] = field(default_factory=dict)
    itl: dict[int, float] = field(default_factory=dict)
    e2e: dict[int, float] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def percentiles(values: Sequence[float]) -> dict[int, float]:
    return {q: percentile(values, q) for q in PERCENTILES}


def summarize(run: Run, category: str = "all") -> Summary:
    """The run's numbers, over every request or over one category's."""
    records = [r for r in run.records if category in ("all", r.category)]
    ok = [r for r in records if r.ok]
    busy = run.busy_s if run.busy_s > 0 else math.nan
    return Summary(
        config=run.config,
        load=run.load,
        category=category,
        num_requests=len(records),
        num_failed=len(records) - len(ok),
        requests_per_s=len(ok) / busy,
        output_tokens_per_s=sum(r.num_output_tokens for r in ok) / busy,
        ttft=percentiles([r.ttft for r in ok if r.ttft is not None]),
        itl=percentiles([gap for r in ok for gap in r.itl]),
        e2e=percentiles([r.e2e for r in ok if r.e2e is not None]),
    )


def summaries(runs: Iterable[Run]) -> list[Summary]:
    """Each run over all its requests, then per category when it has more than one."""
    out = []
    for run in runs:
        out.append(summarize(run))
        categories = sorted({r.category for r in run.records})
        if len(categories) > 1:
            out += [summarize(run, c) for c in categories]
    return out


@dataclass(frozen=True)
class Comparison:
    """A configuration against the first one at the same load."""

    config: str
    baseline: str
    load: str
    tokens_per_s_ratio: float
    ttft_p50_ratio: float
    num_compared: int  # prompts answered by both
    num_identical: int  # of those, with the same text


def compare(runs: Sequence[Run]) -> list[Comparison]:
    """Ratios of every configuration to the first, load by load, and how many outputs agree."""
    out = []
    for load in dict.fromkeys(run.load for run in runs):
        at_load = [run for run in runs if run.load == load]
        base = at_load[0]
        for other in at_load[1:]:
            out.append(_compare_pair(base, other))
    return out


def _compare_pair(base: Run, other: Run) -> Comparison:
    b, o = summarize(base), summarize(other)
    base_texts = {r.index: r.text for r in base.records if r.ok}
    compared = [
        (base_texts[r.index], r.text) for r in other.records if r.ok and r.index in base_texts
    ]
    return Comparison(
        config=other.config,
        baseline=base.config,
        load=base.load,
        tokens_per_s_ratio=_ratio(o.output_tokens_per_s, b.output_tokens_per_s),
        ttft_p50_ratio=_ratio(o.ttft[50], b.ttft[50]),
        num_compared=len(compared),
        num_identical=sum(a == c for a, c in compared),
    )


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan

"""What a benchmark shows: rich tables, the JSON of every request, and a PNG of the sweep."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from spinserve.bench.stats import PERCENTILES, Comparison, Run, Summary


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def say(console: Console, line: str) -> None:
    """Print a line as it is: error text may hold [brackets] that rich would take as markup."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def summary_table(rows: Sequence[Summary]) -> Table:
    table = Table(title="spinserve bench serve")
    for column in ("config", "load", "category"):
        table.add_column(column, no_wrap=True)
    for column in ("ok/n", "req/s", "out tok/s"):
        table.add_column(column, justify="right", no_wrap=True)
    quantiles = "/".join(f"p{q}" for q in PERCENTILES)
    for metric in ("TTFT ms", "ITL ms", "E2E s"):
        table.add_column(f"{metric}\n{quantiles}", justify="right", no_wrap=True)
    for s in rows:
        table.add_row(
            s.config,
            s.load.replace("concurrency=", "c=").replace("rate=", "rate "),
            s.category,
            f"{s.num_requests - s.num_failed}/{s.num_requests}",
            _num(s.requests_per_s, 2),
            _num(s.output_tokens_per_s, 1),
            _triple(s.ttft, 1000, 0),
            _triple(s.itl, 1000, 1),
            _triple(s.e2e, 1, 2),
        )
    return table


def comparison_table(rows: Sequence[Comparison]) -> Table:
    table = Table(title="against the first configuration")
    for column in ("config", "baseline", "load", "tok/s ratio", "TTFT p50 ratio", "same text"):
        table.add_column(column)
    for c in rows:
        table.add_row(
            c.config,
            c.baseline,
            c.load,
            f"{_num(c.tokens_per_s_ratio, 2)}x",
            f"{_num(c.ttft_p50_ratio, 2)}x",
            f"{c.num_identical}/{c.num_compared}",
        )
    return table


def _triple(values: dict[int, float], scale: float, digits: int) -> str:
    return "/".join(_num(values[q] * scale, digits) for q in PERCENTILES)


def _num(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def write_json(
    path: Path,
    settings: dict[str, Any],
    runs: Sequence[Run],
    rows: Sequence[Summary],
    comparisons: Sequence[Comparison],
) -> None:
    """Every request with its text, tokens, times and error, beside the summaries."""
    result = {
        "settings": settings,
        "summaries": [dataclasses.asdict(s) for s in rows],
        "comparisons": [dataclasses.asdict(c) for c in comparisons],
        "runs": [
            {
                "config": run.config,
                "load": run.load,
                "busy_s": run.busy_s,
                "requests": [dataclasses.asdict(r) for r in run.records],
            }
            for run in runs
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # NaN (no successful request) is not JSON: it is written as null.
    path.write_text(json.dumps(_no_nan(result), indent=1, allow_nan=False) + "\n")


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def plot(path: Path, rows: Sequence[Summary]) -> None:
    """Output tokens/s and latency (TTFT and end-to-end p50) against the load, one line per
    configuration. matplotlib is imported here: only ``--plot`` needs it."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    from matplotlib import pyplot

    overall = [s for s in rows if s.category == "all"]
    figure, (speed, latency) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    for config in dict.fromkeys(s.config for s in overall):
        mine = [s for s in overall if s.config == config]
        x = [_load_value(s.load) for s in mine]
        speed.plot(x, [s.output_tokens_per_s for s in mine], marker="o", label=config)
        latency.plot(x, [s.e2e[50] for s in mine], marker="o", label=f"{config} e2e p50")
        latency.plot(x, [s.ttft[50] for s in mine], marker="x", ls="--", label=f"{config} TTFT")
    axis = overall[0].load.split("=")[0] if overall else "load"
    for ax, title, unit in ((speed, "output tokens/s", "tokens/s"), (latency, "latency", "s")):
        ax.set(title=title, xlabel=axis, ylabel=unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _load_value(label: str) -> float:
    return float(label.split("=", 1)[1])

"""Tables and the choice plot of `selection_bench.py` results. No torch.

A result is one request under one configuration at one load level (a dict, see
`selection_bench.request_record`); its ``config`` is ``<level>/<configuration>``, e.g.
``b1/spin`` or ``c8/fixed:ngram``. Rates are totals, never means of per-request rates
(`spec_report.aggregate`): a category's tokens/s is its new tokens over its requests' seconds,
each from submission to finish. At batch 1 that is the speed of the category's prompts; at
``c8`` (all prompts submitted at once) it is the speed a request of that category saw, queueing
included. ``throughput`` is the workload's new tokens over its wall time (at batch 1 the sum of
the prompts' seconds, waits for a quiet machine left out; at ``c8`` first submission to last
finish).

The ratios the tables end with: ``spin / best fixed`` (best of the target alone and every
``fixed:NAME`` on that column), ``spin / best fixed drafter`` (best ``fixed:NAME`` alone: the
issue's "best fixed drafter"), ``spin / oracle`` and ``spin / target`` (the goal: never below
1.00x; a cell below is marked SLOWER). Greedy speculation is lossless, so every output must
equal the target alone's at batch 1 token for token; any difference is marked MISMATCH.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from spec_report import ALL, latency_table
from spec_report import summarize as summarize_results

BATCH1 = "b1"  # the level of one request at a time; c<N>: N concurrent
TARGET = "target"
SPIN = "spin"
ORACLE = "oracle"
REFERENCE = f"{BATCH1}/{TARGET}"  # every output is compared with this configuration's
NO_DRAFTER = "none"
GATE = "-gate"  # spin with its step gate (selection_bench --configs spin-gate)


def level_label(level: str) -> str:
    """``b1`` -> ``batch 1``; ``c8`` -> ``8 concurrent``."""
    return "batch 1" if level == BATCH1 else f"{level[1:]} concurrent"


def drafter_of(label: str) -> str:
    """A choice label's drafter: ``ngram@4`` -> ``ngram``; ``none`` stays."""
    return label.rpartition("@")[0] or label


# ---------------------------------------------------------------- aggregates


def summarize(report: dict) -> dict:
    """{level/configuration: {category, "all", "throughput": aggregate}}. Target GB/s only at
    batch 1: under concurrency requests share forwards, which per-request counts repeat."""
    results = report["results"]
    weight_bytes = report["settings"].get("target_weight_bytes")
    summary = summarize_results([r for r in results if r["level"] == BATCH1], weight_bytes)
    summary |= summarize_results([r for r in results if r["level"] != BATCH1])
    for key, run in report["runs"].items():
        if key in summary and run.get("wall_s"):
            tokens = summary[key][ALL]["new_tokens"]
            summary[key]["throughput"] = {
                "tokens_per_s": tokens / run["wall_s"],
                "wall_s": run["wall_s"],
                "num_mismatched": summary[key][ALL]["num_mismatched"],
            }
    return summary


def choice_shares(results: list[dict], config: str) -> dict[str, dict[str, float]]:
    """{category: {drafter or none: share of the policy's decode steps}} of ``config``."""
    steps: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in sorted(results, key=lambda r: r["category_index"]):
        if r["config"] != config:
            continue
        for label, n in (r["choice_counts"] or {}).items():
            steps[r["category"]][drafter_of(label)] += n
            steps[ALL][drafter_of(label)] += n
    if ALL in steps:
        steps[ALL] = steps.pop(ALL)  # last
    return {
        cat: {d: n / sum(by.values()) for d, n in by.items()}
        for cat, by in steps.items()
        if sum(by.values())
    }


def mean_draft_length(results: list[dict], config: str, category: str) -> float | None:
    """Mean k of the steps ``config`` speculated on, over ``category`` (or all)."""
    num = den = 0
    for r in results:
        if r["config"] == config and category in (ALL, r["category"]):
            for label, n in (r["choice_counts"] or {}).items():
                if label != NO_DRAFTER:
                    num += int(label.rpartition("@")[2]) * n
                    den += n
    return num / den if den else None


# ---------------------------------------------------------------- tables


def levels(report: dict) -> list[str]:
    return list(dict.fromkeys(r["level"] for r in report["results"]))


def configurations(report: dict, level: str) -> list[str]:
    return list(dict.fromkeys(r["name"] for r in report["results"] if r["level"] == level))


def _columns(summary: dict, keys: list[str]) -> list[str]:
    cats = list(dict.fromkeys(c for k in keys for c in summary[k] if c not in (ALL, "throughput")))
    return [*cats, ALL, "throughput"]


def _tps(summary: dict, key: str, col: str) -> float | None:
    agg = summary.get(key, {}).get(col)
    return agg["tokens_per_s"] if agg else None


def _ratio(a: float | None, b: float | None, mark_below_one: bool = False) -> str:
    if a is None or not b:
        return ""
    r = a / b
    return f"**{r:.2f}x SLOWER**" if mark_below_one and r < 1.0 else f"{r:.2f}x"


def _short(name: str) -> str:
    return name.removeprefix("fixed:")


def throughput_table(report: dict, summary: dict, level: str) -> str:
    names = configurations(report, level)
    keys = [f"{level}/{n}" for n in names]
    cols = _columns(summary, keys)
    lines = [
        "| configuration | " + " | ".join(cols) + " | max others busy |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    for name, key in zip(names, keys, strict=True):
        cells = []
        for col in cols:
            agg = summary[key].get(col)
            flag = " **MISMATCH**" if agg and agg["num_mismatched"] else ""
            cells.append(f"{agg['tokens_per_s']:.2f}{flag}" if agg else "")
        busy = summary[key][ALL]["max_others_busy"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {busy:.0%} |")
    drafters = [k for n, k in zip(names, keys, strict=True) if n.startswith("fixed:")]
    fixed = [k for n, k in zip(names, keys, strict=True) if n == TARGET] + drafters
    best = {}
    for label, pool in (("best fixed", fixed), ("best fixed drafter", drafters)):
        if not pool:
            continue
        best[label] = {c: max(pool, key=lambda k, c=c: _tps(summary, k, c) or 0.0) for c in cols}
        cells = [
            f"{_tps(summary, best[label][c], c):.2f} ({_short(best[label][c].split('/', 1)[1])})"
            for c in cols
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " | |")
    spin, oracle, target = (f"{level}/{n}" for n in (SPIN, ORACLE, TARGET))
    ratios = [(f"spin / {label}", by_col, False) for label, by_col in best.items()]
    ratios += [("spin / oracle", oracle, False), ("spin / target", target, True)]
    for label, other, mark in ratios:
        cells = [
            _ratio(
                _tps(summary, spin, c),
                _tps(summary, other if isinstance(other, str) else other[c], c),
                mark,
            )
            for c in cols
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " | |")
    gated = f"{level}/{SPIN}{GATE}"
    if gated in summary:  # the step gate's own contribution
        cells = [_ratio(_tps(summary, gated, c), _tps(summary, spin, c)) for c in cols]
        lines.append(f"| spin{GATE} / spin | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def lossless_table(results: list[dict]) -> str:
    lines = [
        f"| configuration | requests | same as {REFERENCE} | same as target at this level "
        "| mismatches (request@first differing output position) |",
        "|---|---:|---:|---:|---|",
    ]
    for config in dict.fromkeys(r["config"] for r in results):
        rows = [r for r in results if r["config"] == config]
        same = sum(1 for r in rows if r["same_as_target"])
        same_level = sum(1 for r in rows if r["same_as_level_target"])
        bad = [f"{r['request_id']}@{r['first_diff']}" for r in rows if not r["same_as_target"]]
        loud = "**" if bad else ""
        lines.append(
            f"| {config} | {len(rows)} | {loud}{same}/{len(rows)}{loud} "
            f"| {same_level}/{len(rows)} | {loud}{', '.join(bad) or 'none'}{loud} |"
        )
    return "\n".join(lines)


def choices_table(report: dict, level: str) -> str:
    config = f"{level}/{SPIN}"
    shares = choice_shares(report["results"], config)
    if not shares:
        return f"(no {config} results)"
    drafters = list(dict.fromkeys(d for by in shares.values() for d in sorted(by)))
    lines = [
        "| category | " + " | ".join(drafters) + " | mean k when drafting |",
        "|---|" + "---:|" * (len(drafters) + 1),
    ]
    for cat, by in shares.items():
        k = mean_draft_length(report["results"], config, cat)
        cells = [f"{by.get(d, 0.0):.0%}" for d in drafters]
        lines.append(f"| {cat} | " + " | ".join(cells) + f" | {'' if k is None else f'{k:.1f}'} |")
    return "\n".join(lines)


def per_request_table(report: dict, level: str) -> str:
    names = configurations(report, level)
    rows: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in report["results"]:
        if r["level"] == level:
            rows[r["request_id"]][r["name"]] = r
    oracle = report.get("oracle_tables", {}).get(level, {})
    lines = [
        "| request | prompt tok | new tok | "
        + " | ".join(names)
        + " | oracle's arm | spin's choices (steps) |",
        "|---|---:|---:|" + "---:|" * len(names) + "---|---|",
    ]
    for rid, by_name in rows.items():
        first = next(iter(by_name.values()))
        cells = [
            f"{by_name[n]['tokens_per_s']:.2f}" + ("" if by_name[n]["same_as_target"] else " **!**")
            if n in by_name
            else ""
            for n in names
        ]
        spin = by_name.get(SPIN, {}).get("choice_counts") or {}
        counts = ", ".join(f"{label} {n}" for label, n in sorted(spin.items(), key=lambda x: -x[1]))
        lines.append(
            f"| {rid} | {first['num_prompt_tokens']} | {first['num_new_tokens']} | "
            + " | ".join(cells)
            + f" | {oracle.get(rid, '')} | {counts} |"
        )
    return "\n".join(lines)


def markdown(report: dict) -> str:
    summary = report["summary"]
    s = report["settings"]
    head = (
        f"Target {s['target']} ({', '.join(f'{k} {v}' for k, v in s['runtime'].items())}), "
        f"drafters {', '.join(s['drafters'])}; "
        f"greedy, k = {s['num_draft_tokens']} for fixed and random (spin chooses k), at most "
        f"{s['max_tokens']} new tokens, stop at EOS; {len(report['sample'])} prompts "
        f"({s['per_category']} per category, seed {s['seed']}, shuffled); levels: batch 1 and "
        f"{s['concurrency']} concurrent (max_num_seqs {s['concurrency']}); "
        f"run took {report.get('run_minutes', float('nan')):.1f} min."
    )
    mismatched = sum(1 for r in report["results"] if not r["same_as_target"])
    notes = list(report.get("notes", []))
    if mismatched:
        notes.insert(0, f"**!!! {mismatched} outputs differ from {REFERENCE}: see table 2 !!!**")
    notes.append("Order: " + ", ".join(report.get("order", [])))
    parts = [head, "\n".join(f"- {n}" for n in notes)]
    for i, level in enumerate(levels(report), start=1):
        parts.append(
            f"### 1.{i} Tokens/s per category, {level_label(level)}\n\n"
            + throughput_table(report, summary, level)
        )
    parts.append(
        "### 2. Losslessness (greedy output token ids)\n\n" + lossless_table(report["results"])
    )
    for i, level in enumerate(levels(report), start=1):
        parts.append(
            f"### 3.{i} spin's choices: share of decode steps, {level_label(level)}\n\n"
            + choices_table(report, level)
        )
    parts.append("### 4. Latency and cost, all requests\n\n" + latency_table(summary))
    for i, level in enumerate(levels(report), start=1):
        parts.append(
            f"### 5.{i} Per request tokens/s, {level_label(level)} (**!**: output differs)\n\n"
            + per_request_table(report, level)
        )
    return "\n\n".join(parts)


# ---------------------------------------------------------------- the plot


def plot_choices(report: dict, path: Path) -> None:
    """Stacked bars: per category, the share of spin's decode steps each drafter got; one
    panel per load level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(lv, choice_shares(report["results"], f"{lv}/{SPIN}")) for lv in levels(report)]
    panels = [(lv, shares) for lv, shares in panels if shares]
    if not panels:
        return
    drafters = [*report["settings"]["drafters"], NO_DRAFTER]
    colors = dict(zip(drafters, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6.5 * len(panels), 4.2), sharey=True, squeeze=False
    )
    for ax, (level, shares) in zip(axes[0], panels, strict=True):
        cats = list(shares)
        bottom = [0.0] * len(cats)
        for d in drafters:
            heights = [shares[c].get(d, 0.0) for c in cats]
            ax.bar(cats, heights, bottom=bottom, label=d, color=colors[d])
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_title(f"spin, {level_label(level)}")
        ax.set_ylim(0, 1)
        ax.set_xticks(range(len(cats)), cats, rotation=35, ha="right")
    axes[0][0].set_ylabel("share of decode steps")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.suptitle(f"Drafter chosen by spin per category, target {report['settings']['target']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

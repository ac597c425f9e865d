"""Aggregates and markdown tables of `spec_bench.py` results. No torch.

A result is one prompt under one configuration (a dict, see `spec_bench.time_ours`). Rates are
totals, never means of per-prompt rates: a category's tokens/s is its new tokens over its wall
seconds, and the ``all`` row is every category's tokens over every category's seconds.

- ``mal``: mean accepted length, tokens per draft step (``SpecStats``: 1 + accepted / steps);
  ``-`` when the drafter never proposed a token (every step was a plain decode).
  For transformers' assisted generation there are no statistics, so ``~mal`` is new tokens per
  target forward (the streamer sees one event per forward), which includes prefill's one token.
- TTFT: add_request (or generate) to the first new token. ITL: each emission event's gap to
  the previous one, split evenly over the tokens it emitted, one sample per token.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np

ALL = "all"
OURS_TARGET = "ours/target"
HF_PLAIN = "hf/plain"


def itl_samples(events: list[list[float]]) -> list[float]:
    """Per-token inter-token latencies (s) from [[seconds since start, num_tokens], ...]."""
    out: list[float] = []
    for (t0, _), (t1, n) in itertools.pairwise(events):
        out += [(t1 - t0) / n] * int(n)
    return out


def merge_spec(stats: list[dict]) -> dict | None:
    """Summed SpecStats dicts -> mean accepted length and per-position acceptance."""
    stats = [s for s in stats if s]
    if not stats:
        return None
    steps = sum(s["num_draft_steps"] for s in stats)
    drafted = sum(s["num_draft_tokens"] for s in stats)
    accepted = sum(s["num_accepted_tokens"] for s in stats)
    if all("drafted_per_position" in s for s in stats):
        by_pos = _rates(
            _sum_lists([s["drafted_per_position"] for s in stats]),
            _sum_lists([s["accepted_per_position"] for s in stats]),
        )
    else:
        by_pos = _approx_rates(stats)
    return {
        "num_draft_steps": steps,
        "num_draft_tokens": drafted,
        "num_accepted_tokens": accepted,
        "mean_accepted_length": 1.0 + accepted / steps if steps else 0.0,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "acceptance_by_position": by_pos,
        "draft_seconds": sum(s["draft_seconds"] for s in stats),
        "verify_seconds": sum(s["verify_seconds"] for s in stats),
    }


def _sum_lists(lists: list[list[int]]) -> list[int]:
    out = [0] * max((len(x) for x in lists), default=0)
    for x in lists:
        for j, v in enumerate(x):
            out[j] += v
    return out


def _rates(drafted: list[int], accepted: list[int]) -> list[float]:
    return [a / d if d else 0.0 for a, d in zip(accepted, drafted, strict=False)]


def _approx_rates(stats: list[dict]) -> list[float]:
    """Per-position rates weighted by draft steps, for results saved without raw counts."""
    width = max((len(s["acceptance_by_position"]) for s in stats), default=0)
    by_pos = []
    for j in range(width):
        # per-position rates are weighted by the steps that drafted position j
        num = den = 0.0
        for s in stats:
            rates = s["acceptance_by_position"]
            if j < len(rates):
                num += rates[j] * s["num_draft_steps"]
                den += s["num_draft_steps"]
        by_pos.append(num / den if den else 0.0)
    return by_pos


def aggregate(rows: list[dict], weight_bytes: int | None) -> dict:
    tokens = sum(r["num_new_tokens"] for r in rows)
    seconds = sum(r["wall_s"] for r in rows)
    forwards = sum(r["target_forwards"] for r in rows)
    num_events = sum(len(r["events"]) for r in rows)
    itl = [x for r in rows for x in itl_samples(r["events"])]
    ttft = [r["ttft_s"] for r in rows if r["ttft_s"] is not None]
    spec = merge_spec([r["spec_stats"] for r in rows])
    return {
        "num_prompts": len(rows),
        "new_tokens": tokens,
        "wall_s": seconds,
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "target_forwards": forwards,
        "tokens_per_forward": tokens / num_events if num_events else 0.0,
        "target_gb_per_s": weight_bytes * forwards / seconds / 1e9
        if weight_bytes and seconds
        else None,
        "ttft_p50_s": float(np.median(ttft)) if ttft else None,
        "itl_p50_ms": float(np.percentile(itl, 50)) * 1e3 if itl else None,
        "itl_p99_ms": float(np.percentile(itl, 99)) * 1e3 if itl else None,
        "spec": spec,
        "num_mismatched": sum(1 for r in rows if r.get("same_as_target") is False),
        "max_others_busy": max((r["others_busy"] for r in rows), default=0.0),
    }


def summarize(results: list[dict], weight_bytes: int | None = None) -> dict:
    """{config: {category or "all": aggregate}} in the order configs and categories appear."""
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    # category order is the sample's, whatever order the timings (and re-timings) came in
    for r in sorted(results, key=lambda r: r["category_index"]):
        groups[r["config"]][r["category"]].append(r)
    summary = {}
    for config, by_cat in groups.items():
        summary[config] = {cat: aggregate(rows, weight_bytes) for cat, rows in by_cat.items()}
        every = [r for rows in by_cat.values() for r in rows]
        summary[config][ALL] = aggregate(every, weight_bytes)
    return summary


def _categories(summary: dict) -> list[str]:
    cats: list[str] = []
    for by_cat in summary.values():
        cats += [c for c in by_cat if c not in cats and c != ALL]
    return [*cats, ALL]


def _mal_cell(config: str, agg: dict) -> str:
    if agg["spec"] is not None:
        spec = agg["spec"]
        return f" ({spec['mean_accepted_length']:.2f})" if spec["num_draft_steps"] else " (-)"
    if config.startswith("hf/") and config != HF_PLAIN:
        return f" (~{agg['tokens_per_forward']:.2f})"
    return ""


def throughput_table(summary: dict) -> str:
    configs = list(summary)
    lines = [
        "| category | " + " | ".join(configs) + " | best | best ours drafter |",
        "|---|" + "---:|" * len(configs) + "---|---|",
    ]
    for cat in _categories(summary):
        present = [c for c in configs if cat in summary[c]]
        cells = []
        for c in configs:
            agg = summary[c].get(cat)
            if agg is None:
                cells.append("")
                continue
            flag = " **MISMATCH**" if agg["num_mismatched"] else ""
            cells.append(f"{agg['tokens_per_s']:.2f}{_mal_cell(c, agg)}{flag}")
        best = max(present, key=lambda c: summary[c][cat]["tokens_per_s"], default="")
        ours = [c for c in present if c.startswith("ours/") and c != OURS_TARGET]
        best_ours = max(ours, key=lambda c: summary[c][cat]["tokens_per_s"], default="")
        lines.append(f"| {cat} | " + " | ".join(cells) + f" | {best} | {best_ours} |")
    return "\n".join(lines)


def speedup_table(summary: dict, baseline: str) -> str:
    if baseline not in summary:
        return f"(no {baseline} results)"
    configs = [c for c in summary if c != baseline]
    lines = [
        "| category | " + " | ".join(configs) + " |",
        "|---|" + "---:|" * len(configs),
    ]
    for cat in _categories(summary):
        base = summary[baseline].get(cat)
        cells = []
        for c in configs:
            agg = summary[c].get(cat)
            ok = agg is not None and base is not None and base["tokens_per_s"] > 0
            cells.append(f"{agg['tokens_per_s'] / base['tokens_per_s']:.2f}x" if ok else "")
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lossless_table(results: list[dict]) -> str:
    by_config: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_config[r["config"]].append(r)
    lines = [
        "| configuration | prompts | same as ours/target | same as hf/plain | mismatches "
        "(category:id@first differing output position) |",
        "|---|---:|---:|---:|---|",
    ]
    for config, rows in by_config.items():
        if config == OURS_TARGET:
            continue
        same = sum(1 for r in rows if r["same_as_target"])
        hf_known = [r for r in rows if r.get("same_as_hf_plain") is not None]
        hf_same = (
            f"{sum(1 for r in hf_known if r['same_as_hf_plain'])}/{len(hf_known)}"
            if hf_known
            else ""
        )
        bad = [
            f"{r['category']}:{r['prompt_id']}@{r['first_diff']}"
            for r in rows
            if not r["same_as_target"]
        ]
        loud = "**" if bad and config.startswith("ours/") else ""
        lines.append(
            f"| {config} | {len(rows)} | {loud}{same}/{len(rows)}{loud} | {hf_same} "
            f"| {', '.join(bad) or 'none'} |"
        )
    return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def latency_table(summary: dict) -> str:
    lines = [
        "| configuration | tok/s | TTFT p50 s | ITL p50 ms | ITL p99 ms | tokens / target "
        "forward | target GB/s | draft s | verify s | acceptance by position | max others busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for config, by_cat in summary.items():
        a = by_cat[ALL]
        spec = a["spec"]
        by_pos = " ".join(f"{x:.2f}" for x in spec["acceptance_by_position"]) if spec else ""
        lines.append(
            f"| {config} | {a['tokens_per_s']:.2f} | {_fmt(a['ttft_p50_s'], '.2f')} "
            f"| {_fmt(a['itl_p50_ms'], '.0f')} | {_fmt(a['itl_p99_ms'], '.0f')} "
            f"| {a['tokens_per_forward']:.2f} | {_fmt(a['target_gb_per_s'], '.2f')} "
            f"| {_fmt(spec and spec['draft_seconds'], '.1f')} "
            f"| {_fmt(spec and spec['verify_seconds'], '.1f')} | {by_pos} "
            f"| {a['max_others_busy']:.0%} |"
        )
    return "\n".join(lines)


def _mal(spec: dict | None) -> str:
    if spec is None:
        return ""
    return f"{spec['mean_accepted_length']:.2f}" if spec["num_draft_steps"] else "-"


def per_prompt_table(results: list[dict]) -> str:
    lines = [
        "| category | id | configuration | prompt tok | new tok | wall s | tok/s | TTFT s "
        "| mal | draft s | verify s | same as target | others busy |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in sorted(results, key=lambda r: (r["category_index"], r["prompt_id"])):
        s = r["spec_stats"]
        same = "yes" if r["same_as_target"] else f"**NO (@{r['first_diff']})**"
        if r["config"] == OURS_TARGET:
            same = "(reference)"
        lines.append(
            f"| {r['category']} | {r['prompt_id']} | {r['config']} | {r['num_prompt_tokens']} "
            f"| {r['num_new_tokens']} | {r['wall_s']:.1f} | {r['tokens_per_s']:.2f} "
            f"| {_fmt(r['ttft_s'], '.2f')} | {_mal(s)} "
            f"| {_fmt(s and s['draft_seconds'], '.1f')} | {_fmt(s and s['verify_seconds'], '.1f')} "
            f"| {same} | {r['others_busy']:.0%} |"
        )
    return "\n".join(lines)


def markdown(report: dict) -> str:
    summary = report["summary"]
    results = report["results"]
    s = report["settings"]
    head = (
        f"Target {s['target']}, batch 1, greedy, k = {s['num_draft_tokens']} draft tokens, "
        f"at most {s['max_tokens']} new tokens, stop at EOS (all configurations), "
        f"{s['per_category']} prompt(s) per category (seed {s['seed']}), "
        f"{s['threads']} threads; run took {report.get('run_minutes', float('nan')):.1f} min."
    )
    sample = ", ".join(f"{p['category']}:{p['prompt_id']}" for p in report.get("sample", []))
    hf = "; ".join(
        f"{name}: {a['kind']}, num_assistant_tokens {a['num_assistant_tokens']} "
        f"({a['num_assistant_tokens_schedule']}), confidence threshold "
        f"{a['assistant_confidence_threshold']}"
        for name, a in s.get("hf_assistants", {}).items()
    )
    lines = [f"Sample: {sample}", *([f"transformers assistants: {hf}"] if hf else [])]
    notes = "\n".join(f"- {n}" for n in [*lines, *report.get("notes", [])])
    return "\n\n".join(
        part
        for part in [
            head,
            notes,
            "### 1. Tokens/s per category (mean accepted length; ~: new tokens per target "
            "forward)\n\n" + throughput_table(summary),
            "### 2a. Speedup over ours/target\n\n" + speedup_table(summary, OURS_TARGET),
            "### 2b. Speedup over hf/plain\n\n" + speedup_table(summary, HF_PLAIN),
            "### 3. Losslessness (greedy output token ids)\n\n" + lossless_table(results),
            "### 4. Latency and cost, all prompts\n\n" + latency_table(summary),
            "### 5. Per prompt\n\n" + per_prompt_table(results),
        ]
        if part
    )

"""docs/benchmarks.md's prefix caching section, from ``benchmarks/prefix_bench.py``'s results.
No torch."""

from __future__ import annotations


def markdown(report: dict) -> str:
    s = report["summary"]
    settings = report["settings"]
    mt, doc, mix = s["multi_turn"], s["shared_doc"], s["no_sharing"]
    rows = [
        (
            "multi-turn: turn-2 time to first token, median",
            _s(mt["turn2_ttft_p50_s"]["off"]),
            _s(mt["turn2_ttft_p50_s"]["on"]),
            mt["turn2_ttft_ratio"],
            "<= 0.25",
        ),
        (
            "multi-turn: output tokens/s over the whole run",
            f"{mt['tokens_per_s']['off']:.2f}",
            f"{mt['tokens_per_s']['on']:.2f}",
            mt["throughput_ratio"],
            ">= 1.0",
        ),
    ]
    for load, d in doc.items():
        at_once = load.replace("concurrency=", "") + " at once"
        label = "one at a time" if load == "sequential" else at_once
        what = f"shared document, {settings['questions']} questions {label}"
        rows.append(_total_row(what, d, "<= 0.4"))
    for config, m in mix.items():
        who = "the server's policy" if config == "default" else f"drafter {config}"
        rows.append(
            _total_row(f"no shared document ({settings['mix']} prompts, {who})", m, "<= 1.03")
        )
    lines = [
        "| workload | caching off | caching on | on / off | goal |",
        "|---|---:|---:|---:|---:|",
        *(f"| {w} | {off} | {on} | {r:.2f} | {g} |" for w, off, on, r, g in rows),
    ]
    return "\n".join(lines) + (
        f"\n\nSample: {settings['conversations']} MT-Bench two-turn conversations (Spec-Bench "
        f"dev split, across its categories), documents of about {settings['doc_tokens']} "
        f"tokens (Spec-Bench RAG passages), up to {settings['turn_tokens']} output tokens "
        f"an answer in a conversation and {settings['max_tokens']} elsewhere, greedy, "
        f"streamed; every request names the drafter "
        f"{settings['drafter']} but the first no-shared-document row's (see the script's "
        f"docstring). Outputs identical with caching on and off: "
        f"{s['outputs_identical']}."
    )


def _total_row(workload: str, result: dict, goal: str) -> tuple:
    """A row of a workload's total seconds, caching off and on, their ratio and the goal."""
    seconds = result["seconds"]
    return (f"{workload}: total", _s(seconds["off"]), _s(seconds["on"]), result["ratio"], goal)


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def headline(report: dict) -> str:
    """README's sentence on prefix caching."""
    s, settings = report["summary"], report["settings"]
    doc = s["shared_doc"]
    load, at_once = next((k, v) for k, v in doc.items() if k != "sequential")
    return (
        f"Prefix caching (on by default) against `--no-prefix-caching`, same server: a "
        f"conversation's second turn starts in {s['multi_turn']['turn2_ttft_ratio']:.2f}x the "
        f"time, {settings['questions']} questions on a {settings['doc_tokens']:,}-token "
        f"document take {doc['sequential']['ratio']:.2f}x the time one at a time and "
        f"{at_once['ratio']:.2f}x {load.replace('concurrency=', '')} at once, outputs "
        f"identical ({s['outputs_identical']})."
    )

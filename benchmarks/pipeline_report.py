"""docs/benchmarks.md's sections on a served step's host overhead and on overlapping drafting
with verification, from ``step_overhead.py`` and ``pipeline_probe.py``. No torch."""

from __future__ import annotations

PARTS = ("forward", "verify", "propose", "schedule", "update", "observe", "commit", "server")


def overhead_markdown(report: dict) -> str:
    head = "| requests, drafter | steps | " + " | ".join(PARTS) + " | served / forward |"
    lines = [head, "|---|---:|" + "---:|" * (len(PARTS) + 1)]
    for key, r in report["results"].items():
        drafter, concurrency = key.split("@")
        label = f"{concurrency} at once, {'none' if drafter == 'none' else 'spin chooses'}"
        ms = " | ".join(f"{r['per_iteration_ms'][p]:.2f}" for p in PARTS)
        lines.append(f"| {label} | {r['iterations']} | {ms} | {r['served_over_forward']:.3f} |")
    return (
        "\n".join(lines)
        + "\n\nMilliseconds per engine-thread iteration that ran a step; `propose` is the "
        "drafters' time (model drafters' rounds included), `server` the engine thread's work "
        "outside the engine step (handing updates to the event loop, metrics)."
    )


def probe_markdown(report: dict) -> str:
    s, cfg = report["seconds"], report["settings"]
    rows = [
        ("target verification forward, all cores", s["target_all_cores"]),
        ("0.5B drafter's rounds, all cores", s["drafter_all_cores"]),
        ("one after the other (today's step)", s["sequential"]),
        ("at once, cores split between them (a perfect pipeline)", s["overlapped"]),
        (f"target alone on {cfg['split']} of {cfg['cores']} cores", s["target_on_its_share"]),
        ("drafter alone on the other cores", s["drafter_on_its_share"]),
    ]
    lines = ["| call | ms |", "|---|---:|", *(f"| {n} | {1000 * t:.1f} |" for n, t in rows)]
    return "\n".join(lines) + (
        f"\n\n{cfg['batch']} sequences at context {cfg['context']}, k = {cfg['k']}; medians of "
        f"{cfg['reps']}. At once / one after the other: "
        f"{report['overlapped_over_sequential']:.2f}."
    )


def engine_ab_markdown(report: dict) -> str:
    """`engine_ab.py`: decode tokens/s per configuration on two trees (or settings), and
    over the target alone in the same process."""
    first, second = report["trees"]
    lines = [
        f"| configuration | tokens/s, {first} | tokens/s, {second} | second / first, per "
        f"round | over the target alone, {first} | over the target alone, {second} |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for config, r in report["summary"].items():
        ratios = ", ".join(f"{x:.3f}" for x in r["ratio_per_round"])
        a, b = r[first], r[second]
        alone = " | ".join(f"{x.get('over_target_alone', float('nan')):.3f}" for x in (a, b))
        lines.append(
            f"| {config} | {a['tokens_per_s']:.2f} | {b['tokens_per_s']:.2f} | {ratios} | {alone} |"
        )
    commits = ", ".join(f"{tree}: {commit}" for tree, commit in report["trees"].items())
    return "\n".join(lines) + (
        f"\n\nDecode tokens/s (first token to last), summed over the prompts of a round, mean "
        f"of the rounds; over the target alone: the same process's `none`, mean of the rounds "
        f"(processes differ by several percent, so a drafter's speedup is read within one). "
        f"Trees: {commits}. Outputs differing from the first tree's target alone: "
        f"{report['num_mismatched_outputs']}."
    )

"""Does stopping a model drafter at its first unsure token pay? Replays the 0.5B drafter with
llama.cpp's rule (``--draft-p-min``: stop drafting once the drafter's top-1 probability falls
below p) against drafting a fixed k, on a step recording, on this CPU's costs.

The recording keeps, at every output position, the 0.5B's proposal and its teacher-forced
confidence: its top-1 probability given the prompt and the target's output so far. While a
draft agrees with the output the two contexts are the same, so the confidence of draft token
j is the recorded one at position t + j, exactly, up to and including the first token that
differs. Past that token the draft is rejected anyway; what the drafter's confidence would be
there is unknown, so two bounds are replayed: it drafts on to k (``pessimistic``) or stops
right there (``optimistic``). A step costs its drafting rounds (a token below p still costs the
round that made it) and the target's forward of drafted + 1 rows; the request advances by the
accepted tokens and one more. Ratios: decode tokens/s over the target alone's.

Reproduce (seconds)::

    .venv/bin/python -m research.selection.early_stop benchmarks/traces/step_trace.json \\
        benchmarks/traces/step_trace_seed1.json --out benchmarks/results/early_stop.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from research.selection.step_features import load_recordings

QWEN = "qwen2.5-coder-0.5b-instruct"
COMMAND = ".venv/bin/python -m research.selection.early_stop"
# The 0.5B's round against the target's decode, measured on one thread of model work (Zen 4)
ROUND_OVER_DECODE = 16.5 / 33.5
CHEAPER_ROUND = 0.75


def load(paths: Sequence[Path]) -> tuple[list[dict], list[float]]:
    """Requests (a prompt in several recordings once) and the first recording's forward
    seconds by rows at its shortest context."""
    forward = json.loads(paths[0].read_text())["cost"]["forward"][0]
    return [s.evidence for s in load_recordings(paths)], forward


def step(request: dict, t: int, k: int, p_min: float, pessimistic: bool) -> tuple[int, int, int]:
    """(rounds, drafted, accepted) of one step at output position ``t``."""
    output, proposal = request["output_ids"], request["proposals"][QWEN][t][:k]
    confidence = request["confidence"][QWEN]
    rounds = drafted = accepted = 0
    for j, token in enumerate(proposal):
        if t + j >= len(output):
            break
        rounds += 1
        if confidence[t + j][0] < p_min:
            break
        drafted += 1
        if token != output[t + j]:
            if pessimistic:
                rounds, drafted = k, k
            break
        accepted += 1
    return rounds, drafted, accepted


def replay(
    requests: list[dict],
    forward: list[float],
    k: int,
    p_min: float,
    pessimistic: bool = True,
    round_over_decode: float = ROUND_OVER_DECODE,
) -> dict[str, float]:
    """Decode tokens/s over the target alone's, per category and ``all``."""
    decode, round_s = forward[0], forward[0] * round_over_decode
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # tokens, s, base s
    for request in requests:
        n, t = len(request["output_ids"]), 0
        row = totals[request["category"]]
        while t < n:
            rounds, drafted, accepted = step(request, t, k, p_min, pessimistic)
            emitted = min(accepted + 1, n - t)
            row[0] += emitted
            row[1] += rounds * round_s + forward[min(drafted + 1, len(forward)) - 1]
            row[2] += emitted * decode
            t += emitted
    totals["all"] = [sum(r[i] for r in list(totals.values())) for i in range(3)]
    return {cat: round(r[2] / r[1], 3) for cat, r in sorted(totals.items())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("traces", nargs="+", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    requests, forward = load(args.traces)
    results = {f"fixed k={k}": replay(requests, forward, k, 0.0) for k in (1, 2, 3, 4)}
    for p_min in (0.5, 0.7, 0.8, 0.9):
        for k in (4, 8):
            for pessimistic in (True, False):
                bound = "pessimistic" if pessimistic else "optimistic"
                name = f"p_min={p_min} k<={k} ({bound})"
                results[name] = replay(requests, forward, k, p_min, pessimistic)
    # A cheaper round (a drafting head over part of the vocabulary: the 0.5B's output matrix
    # is about a quarter of its bytes), drafting a fixed k: what it could buy at best.
    cheaper = CHEAPER_ROUND * ROUND_OVER_DECODE
    for k in (1, 2, 3):
        results[f"fixed k={k}, round x{CHEAPER_ROUND}"] = replay(
            requests, forward, k, 0.0, round_over_decode=cheaper
        )
    for name, ratios in results.items():
        print(f"{name:34s} all {ratios['all']:.3f}")
    if args.out:
        out = {
            "command": " ".join([COMMAND, *map(str, args.traces), "--out", str(args.out)]),
            "requests": len(requests),
            "round_over_decode": ROUND_OVER_DECODE,
            "cheaper_round": CHEAPER_ROUND,
            "ratios": results,
        }
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

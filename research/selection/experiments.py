"""The policies the simulator compares (baselines, bounds and `spin` variants) and the tables
it prints::

    python -m research.selection.experiments [--requests N] [--seeds N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from research.selection.simulate import (
    PolicyFactory,
    StretchOraclePolicy,
    all_arms,
    compare,
    request_oracle,
)
from research.selection.variants import VariantParams, VariantPolicy
from research.selection.workloads import HARDWARE, make_requests
from spinserve.selection.baselines import FixedPolicy, RandomPolicy, RoundRobinPolicy
from spinserve.selection.policy import NO_SPECULATION, Choice
from spinserve.selection.spin import SpinParams, SpinPolicy

K = 4  # the configured draft length of the fixed baselines
ORACLE = "oracle (drafter@4)"  # the oracle: best drafter per request, k = K
LENGTHS = SpinParams().draft_lengths  # the arms of the regret and the oracles


class _CatchupUncalibrated(VariantPolicy):
    """spin given only the forward's line at start, as before drafters were measured: a
    drafter's catch-up is learned from its first switch."""

    def calibrate(self, timings, draft_timings=()) -> None:
        super().calibrate(timings)


def _product(hw, requests, concurrency, seed) -> SpinPolicy:
    return SpinPolicy(hw.drafter_names, SpinParams(seed=seed))


def _spin(cls: type[VariantPolicy] = VariantPolicy, **changes) -> PolicyFactory:
    params = replace(VariantParams(), **changes)

    def make(hw, requests, concurrency, seed):
        return cls(hw.drafter_names, replace(params, seed=seed))

    return make


def _fixed(name: str | None) -> PolicyFactory:
    choice = NO_SPECULATION if name is None else Choice(name, K)
    return lambda hw, requests, concurrency, seed: FixedPolicy(choice)


def _drafter_arms(hw) -> list[Choice]:
    return [Choice(d, K) for d in hw.drafter_names]


FACTORIES: dict[str, PolicyFactory] = {
    "fixed:none": _fixed(None),
    **{f"fixed:{d}": _fixed(d) for d in HARDWARE["cpu"].drafter_names},
    "random": lambda hw, rq, c, seed: RandomPolicy(_drafter_arms(hw), seed),
    "round-robin": lambda hw, rq, c, seed: RoundRobinPolicy(_drafter_arms(hw)),
    ORACLE: lambda hw, rq, c, seed: request_oracle(rq, hw, [NO_SPECULATION, *_drafter_arms(hw)], c),
    "oracle (all arms)": lambda hw, rq, c, seed: request_oracle(rq, hw, all_arms(hw, LENGTHS), c),
    "stretch-oracle": lambda hw, rq, c, seed: StretchOraclePolicy(rq, hw, all_arms(hw, LENGTHS)),
    "spin": _product,
    "no change detection": _spin(change_threshold=0.0),
    "no change detection, discount 0.95": _spin(change_threshold=0.0, discount=0.95),
    "discount 0.95": _spin(discount=0.95),
    "no discount (restarts only)": _spin(discount=1.0),
    "TS, no forgetting": _spin(discount=1.0, change_threshold=0.0),
    "exploration 1 (plain TS)": _spin(exploration=1.0),
    "D-UCB c=0.5": _spin(rule="ucb"),
    "UCB1 c=1, no forgetting": _spin(
        rule="ucb", exploration=1.0, discount=1.0, change_threshold=0.0
    ),
    "eps-greedy 0.05": _spin(rule="greedy", exploration=0.05),
    "no shared prior": _spin(shared_prior=False),
    "exploring under load": _spin(explore_under_load=True),
    "catch-up not calibrated": _spin(_CatchupUncalibrated),
    "no cap after a rejection": _spin(cap_after_reject=0),
    "cap 2 after a rejection": _spin(cap_after_reject=2),
    "output horizon 32": _spin(output_tokens=32.0),
    "output horizon 512": _spin(output_tokens=512.0),
    "flat D-TS, drafter x {2,4,8}": _spin(model="flat", draft_lengths=(2, 4, 8), discount=0.95),
    "flat D-TS, k=4": _spin(model="flat", draft_lengths=(4,), discount=0.95),
    "flat SW-UCB (w=20), x {2,4,8}": _spin(
        model="flat", draft_lengths=(2, 4, 8), rule="ucb", exploration=1.0, window=20
    ),
    "flat D-TS, token-share reward": _spin(
        model="flat", draft_lengths=(2, 4, 8), reward="direct", discount=0.95
    ),
}


def run_all(args: argparse.Namespace) -> dict:
    results = {}
    for hw_name in args.hardware:
        hw = HARDWARE[hw_name]
        arms = all_arms(hw, LENGTHS)
        for concurrency in args.concurrency:
            start = time.perf_counter()
            factories = {name: FACTORIES[name] for name in args.policies}
            rows = compare(
                factories,
                hw,
                lambda seed: make_requests(args.requests, seed),
                concurrency,
                range(args.seeds),
                arms,
            )
            key = f"{hw_name}/batch {concurrency}"
            results[key] = rows
            print(_table(key, rows, time.perf_counter() - start), flush=True)
    print(summary(results))
    print(category_summary(results))
    return results


def summary(results: dict[str, dict[str, dict]]) -> str:
    """One row per policy: tokens/s relative to the per-request oracle in every setting
    (regret per request in parentheses), and the mean over settings."""
    keys = list(results)
    lines = [
        "\n| policy | " + " | ".join(keys) + " | mean |",
        "|---|" + "---:|" * (len(keys) + 1),
    ]
    for name in next(iter(results.values())):
        ratios, cells = [], []
        for key in keys:
            row, oracle = results[key][name], results[key].get(ORACLE, results[key][name])
            ratio = row["tokens_per_second"] / oracle["tokens_per_second"]
            ratios.append(ratio)
            cells.append(f"{ratio:.3f} ({row['regret_per_request']:.0f})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(ratios) / len(ratios):.3f} |")
    return "\n".join(lines)


def category_summary(results: dict[str, dict[str, dict]]) -> str:
    """Per setting and policy: tokens/s of each category relative to the target alone
    (``fixed:none``), and the worst category."""
    lines = []
    for key, rows in results.items():
        base = rows.get("fixed:none")
        if base is None:
            continue
        cats = list(base["categories"])
        lines += [
            f"\n{key}: tokens/s per category / fixed:none\n",
            "| policy | " + " | ".join(cats) + " | worst |",
            "|---|" + "---:|" * (len(cats) + 1),
        ]
        for name, row in rows.items():
            ratios = [row["categories"][c] / base["categories"][c] for c in cats]
            cells = " | ".join(f"{r:.3f}" for r in ratios)
            lines.append(f"| {name} | {cells} | {min(ratios):.3f} |")
    return "\n".join(lines)


def _table(title: str, rows: dict[str, dict], seconds: float) -> str:
    oracle = rows.get(ORACLE, next(iter(rows.values())))["tokens_per_second"]
    lines = [
        f"\n{title} ({seconds:.0f} s)\n",
        "| policy | tokens/s | / oracle | regret (tokens per request) | top choices |",
        "|---|---:|---:|---:|---|",
    ]
    for name, row in rows.items():
        tps = row["tokens_per_second"]
        top = "; ".join(f"{cat}: {next(iter(c))}" for cat, c in row["choices"].items() if c)
        lines.append(
            f"| {name} | {tps:.2f} | {tps / oracle:.3f} | {row['regret_per_request']:.1f} | {top} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--hardware", nargs="+", default=list(HARDWARE), choices=list(HARDWARE))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--policies", nargs="+", default=list(FACTORIES), choices=list(FACTORIES))
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = run_all(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

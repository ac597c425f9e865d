"""Does a learned per-step predictor reach the replay goal? Held-out replay of `StepPolicy`
against the target alone, fixed suffix, spin, the per-request oracle and the per-step
hindsight bounds, and the predictor's AUC and log loss on held-out prompts.

Held out: within each category the requests, sorted by id, alternate between two folds; each
fold is scored after the other was replayed first (every learning policy, spin included, has
learnt on the other fold, in the same order), then the folds swap. Ratios are tokens/s of the
held-out requests over the target alone's on the same requests, per category and over all,
averaged over ``--orders`` request orders (and seeds for the randomised policies).

Reproduce (from the repository root; about a minute; a prompt in both recordings counts once,
the first recording's costs are used)::

    .venv/bin/python -m research.selection.step_predict benchmarks/traces/step_trace.json \\
        benchmarks/traces/step_trace_seed1.json --out benchmarks/results/step_predict.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from research.selection.replay import (
    CostModel,
    ReplayResult,
    hindsight,
    oracle,
    replay,
    shuffled,
)
from research.selection.step_features import StepRequest, auc, load_recordings, log_loss
from research.selection.step_policy import ShippedGatePolicy, StepPolicy, base_rates
from research.selection.variants import VariantParams, VariantPolicy
from spinserve.selection.baselines import FixedPolicy
from spinserve.selection.policy import NO_SPECULATION, Choice

COMMAND = ".venv/bin/python -m research.selection.step_predict"


def folds(steps: Sequence[StepRequest]) -> tuple[list[StepRequest], list[StepRequest]]:
    """Two halves, alternating within each category by request id."""
    by_category = defaultdict(list)
    for step in sorted(steps, key=lambda s: s.request_id):
        by_category[step.traced.category].append(step)
    halves: tuple[list, list] = ([], [])
    for rows in by_category.values():
        for i, step in enumerate(rows):
            halves[i % 2].append(step)
    return halves


def held_out_rates(result: ReplayResult, test: Sequence[str]) -> dict[str, float]:
    """Tokens/s of the ``test`` requests, per category and ``all``."""
    groups = defaultdict(list)
    for rid in test:
        groups[result.category[rid]].append(rid)
        groups["all"].append(rid)
    return {
        c: sum(result.tokens[r] for r in ids) / sum(result.seconds[r] for r in ids)
        for c, ids in groups.items()
    }


def configurations(
    steps: dict[str, StepRequest], cost: CostModel, base: dict
) -> dict[str, Callable[[int], object]]:
    """Name -> policy factory (by seed); oracle and hindsight are computed, not replayed."""
    drafters = list(cost.drafters)
    configs: dict[str, Callable[[int], object]] = {
        "target": lambda seed: FixedPolicy(NO_SPECULATION),
        "fixed:suffix@2": lambda seed: FixedPolicy(Choice("suffix", 2)),
        "spin": lambda seed: VariantPolicy(drafters, VariantParams(seed=seed)),
        "step": lambda seed: StepPolicy(steps, cost, "learned", seed),
        "step:lookups": lambda seed: StepPolicy(
            steps, _only(cost, ("ngram", "suffix")), "learned", seed
        ),
        "step:profit": lambda seed: StepPolicy(steps, cost, "learned", seed, objective="profit"),
        "step[without=target+support]": lambda seed: StepPolicy(
            steps, cost, "learned", seed, without=frozenset({"target", "support"})
        ),
        "step:oracle": lambda seed: StepPolicy(steps, cost, "oracle", seed),
        "step-gate": lambda seed: ShippedGatePolicy(steps, cost),
        "step-gate[learning_rate=0.2]": lambda seed: ShippedGatePolicy(steps, cost, 0.2),
    }
    for target_auc in (0.8, 0.9, 0.95):
        configs[f"step:auc{target_auc}"] = lambda seed, a=target_auc: StepPolicy(
            steps, cost, a, seed, base=base
        )
    return configs


def _only(cost: CostModel, names: Sequence[str]) -> CostModel:
    return CostModel(cost.contexts, cost.forward, {n: cost.drafters[n] for n in names})


def run(steps: list[StepRequest], cost: CostModel, orders: int, seeds: int) -> dict:
    by_id = {s.request_id: s for s in steps}
    base = base_rates(steps)
    configs = configurations(by_id, cost, base)
    drafters = list(cost.drafters)
    arms = [NO_SPECULATION, *(Choice(d, k) for d in drafters for k in range(1, cost.max_tokens))]
    bounds = {
        "oracle": lambda reqs: oracle(reqs, cost, arms),
        "hindsight:ngram+suffix": lambda reqs: hindsight(reqs, cost, ["ngram", "suffix"]),
        "hindsight": lambda reqs: hindsight(reqs, cost, drafters),
    }
    ratios: dict[str, list[dict[str, float]]] = defaultdict(list)
    logs, batch = [], []
    for first, second in (folds(steps), folds(steps)[::-1]):
        test_ids = [s.request_id for s in second]
        for order in range(orders):
            ordered = [s.traced for s in shuffled(first, order) + shuffled(second, order + 99)]
            runs: dict[str, list[dict[str, float]]] = defaultdict(list)
            for name, make in configs.items():
                randomised = name == "spin" or name.startswith("step:auc")
                for seed in range(seeds if randomised else 1):
                    policy = make(seed)
                    runs[name].append(held_out_rates(replay(policy, ordered, cost), test_ids))
                    if name == "step":
                        logs += [row for row in policy.log if row[0] in set(test_ids)]
                        if order == 0:
                            batch.append(batch_fit(policy.log, set(test_ids)))
            test = [s.traced for s in second]
            for name, bound in bounds.items():
                runs[name].append(held_out_rates(bound(test), test_ids))
            reference = runs["target"][0]
            for name, rows in runs.items():
                ratios[name] += [{c: row[c] / reference[c] for c in row} for row in rows]
    table = {
        name: {c: round(statistics.mean(r[c] for r in rows), 3) for c in rows[0]}
        for name, rows in ratios.items()
    }
    spread = {
        n: [round(min(r["all"] for r in rows), 3), round(max(r["all"] for r in rows), 3)]
        for n, rows in ratios.items()
    }
    return {
        "ratios": table,
        "all_min_max": spread,
        "predictor": predictor_scores(logs),
        "batch_fit": {k: [round(fold[k], 3) for fold in batch] for k in batch[0]},
    }


def batch_fit(log: Sequence[tuple], test: set[str]) -> dict[str, float]:
    """What the same features allow a logistic regression fitted in one batch (Newton, L2):
    per lookup and depth 1-2, the AUC held out (fitted on the other fold's examples, scored
    on ``test``'s) and in-sample (fitted and scored on all): the learner's share of the gap
    to the goal, against the features'."""
    out = {}
    for drafter in ("ngram", "suffix"):
        for depth in (1, 2):
            rows = [r for r in log if r[1] == drafter and r[2] == "post" and r[3] == depth]
            if not rows:
                continue
            x = np.array([r[6] for r in rows])
            y = np.array([r[5] for r in rows])
            held = np.array([r[0] in test for r in rows])
            w = _newton(x[~held], y[~held])
            fitted = x @ _newton(x, y)
            out[f"{drafter}/{depth}/held_out"] = float(auc(list(x[held] @ w), list(y[held])) or 0.5)
            out[f"{drafter}/{depth}/in_sample"] = float(auc(list(fitted), list(y)) or 0.5)
    return out


def _newton(x: np.ndarray, y: np.ndarray, l2: float = 0.1) -> np.ndarray:
    w = np.zeros(x.shape[1])  # x: [examples, features]
    for _ in range(30):
        z = 1 / (1 + np.exp(-x @ w))
        hessian = x.T @ (x * (z * (1 - z))[:, None]) + l2 * np.eye(len(w))
        w -= np.linalg.solve(hessian, x.T @ (z - y) + l2 * w)
    return w


def predictor_scores(logs: Sequence[tuple]) -> dict:
    """AUC, log loss, pass rate and examples per drafter, stage and depth (4 = 4 or more),
    of the learned predictor's predictions on held-out requests, each made before learning;
    over all depths also its calibration (`calibration`)."""
    groups = defaultdict(list)
    for _, drafter, stage, depth, p, label, _ in logs:
        groups[f"{drafter}/{stage}/all"].append((p, label))
        groups[f"{drafter}/{stage}/{min(depth, 4)}"].append((p, label))
    out = {}
    for key in sorted(groups):
        probs, labels = zip(*groups[key], strict=True)
        area = auc(probs, labels)
        out[key] = {
            "auc": area and round(area, 3),
            "log_loss": round(log_loss(probs, labels), 3),
            "pass_rate": round(statistics.mean(labels), 3),
            "examples": len(labels),
        }
        if key.endswith("/all"):
            out[key]["calibration"] = calibration(probs, labels)
    return out


def calibration(probs: Sequence[float], labels: Sequence[int], bins: int = 5) -> list[list]:
    """Per bin of predicted pass chance (``bins`` equal widths of [0, 1]): its range, the
    mean prediction, the pass rate observed and the count (empty bins left out).

    >>> calibration([0.1, 0.15, 0.9, 0.95], [0, 1, 1, 1], bins=2)
    [[0.0, 0.5, 0.125, 0.5, 2], [0.5, 1.0, 0.925, 1.0, 2]]
    """
    groups: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for p, label in zip(probs, labels, strict=True):
        groups[min(int(p * bins), bins - 1)].append((p, label))
    return [
        [
            round(b / bins, 3),
            round((b + 1) / bins, 3),
            round(statistics.mean(p for p, _ in groups[b]), 3),
            round(float(statistics.mean(label for _, label in groups[b])), 3),
            len(groups[b]),
        ]
        for b in sorted(groups)
    ]


def markdown(report: dict) -> str:
    table = report["ratios"]
    categories = sorted(c for c in next(iter(table.values())) if c != "all")
    lines = [
        "| policy | " + " | ".join(categories) + " | all | all min-max |",
        "|---|" + "---:|" * (len(categories) + 2),
    ]
    for name, row in table.items():
        cells = " | ".join(f"{row[c]:.2f}x" for c in categories)
        low, high = report["all_min_max"][name]
        lines.append(f"| {name} | {cells} | {row['all']:.3f}x | {low:.2f}-{high:.2f} |")
    lines += [
        "",
        "| predictor | AUC | log loss | pass rate | examples |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, s in report["predictor"].items():
        lines.append(
            f"| {key} | {s['auc']} | {s['log_loss']} | {s['pass_rate']} | {s['examples']} |"
        )
    lines += ["", "| batch fit on the same features | AUC, fold 1, fold 2 |", "|---|---|"]
    lines += [f"| {key} | {folds} |" for key, folds in report["batch_fit"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="step_predict", description=__doc__.split("\n")[0])
    p.add_argument(
        "traces", type=Path, nargs="+", help="step recordings; the first one's costs are used"
    )
    p.add_argument("--orders", type=int, default=4, help="request orders per fold")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the randomised policies")
    p.add_argument("--out", type=Path, default=None, help="JSON report")
    args = p.parse_args(argv)
    steps = load_recordings(args.traces)
    data = json.loads(args.traces[0].read_text())
    cost = CostModel.from_json(data["cost"])
    report = run(steps, cost, args.orders, args.seeds)
    traces = " ".join(map(str, args.traces))
    report["command"] = f"{COMMAND} {traces} --orders {args.orders} --seeds {args.seeds}"
    report["requests"] = len(steps)
    report["output_tokens"] = sum(s.traced.num_output_tokens for s in steps)
    report["cost_measured"] = data.get("cost_measured")
    print(markdown(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

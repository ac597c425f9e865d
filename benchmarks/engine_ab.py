"""The same engine workload on two source trees, their processes alternating, so both see the
same machine: what a change to the engine does to served decode speed, side by side.

Reproduce (from the repository root; ~6 minutes; ``git worktree add /tmp/base <commit>`` makes
the other tree)::

    .venv/bin/python benchmarks/engine_ab.py --trees /tmp/base . --rounds 2 \\
        --configs none smollm2-135m-instruct@2 qwen2.5-coder-0.5b-instruct@2 \\
        --out benchmarks/results/engine_ab.json

Each round runs one process per tree (the order alternates between rounds), each importing
spinserve from its tree (``PYTHONPATH``) and doing the same work: load the target with the
zoo's default drafters (every model drafter loaded, as the server does), build an engine, one
untimed warm-up, then for each prompt of the sample (one per category of `spec_prompts`, seed
0, chat-templated) each configuration in turn (``none``: the target alone; ``spin``: the
default policy choosing; ``NAME@K``: that drafter at k), greedy, ``--max-tokens``. A
request's decode time runs from its first token to its last, so prefill (which no drafter
shortens) stays out. ``--extra-rounds N [M]`` sets the
cross-tokenizer drafter's extra drafting rounds (N in both trees, or N in the first and M in
the second; unset: each tree's own), so ``--trees . . --extra-rounds 2 1`` compares that
setting on one tree.

The report: per tree and configuration, decode tokens/s summed over prompts and rounds, and
the per-round ratio of the second tree to the first; every output is checked against the
first tree's target alone (greedy outputs must not change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from step_bench import machine_info

HERE = Path(__file__).resolve().parent
TARGET = "qwen2.5-coder-1.5b-instruct"


def child(args: argparse.Namespace) -> None:
    """One tree's measurements, as JSON lines on stdout."""
    import torch

    sys.path.insert(0, str(HERE))
    from spec_prompts import sample_prompts

    import spinserve.speculative.cross_tokenizer as cross
    from spinserve.config.engine import EngineConfig
    from spinserve.config.sampling import SamplingParams
    from spinserve.config.speculative import SpecParams, SpeculativeConfig
    from spinserve.engine.builder import build_engine
    from spinserve.loading import loader, zoo

    torch.set_num_threads(args.threads)
    if args.extra_rounds is not None:
        cross._EXTRA_DRAFTER_TOKENS = args.extra_rounds[0]
    target = loader.load(TARGET, fetch_missing=False)
    spec = SpeculativeConfig(drafters=tuple(zoo.default_drafters(TARGET)))
    engine = build_engine(target, EngineConfig(speculative=spec))
    chat = target.tokenizer.apply_chat_template
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    engine.generate([chat([{"role": "user", "content": "Name three prime numbers."}])], params)
    cache = Path.home() / ".cache" / "spinserve"
    prompts = sample_prompts(Path(args.spec_bench), cache / "datasets", 1, 0)
    for prompt in prompts:
        ids = chat([{"role": "user", "content": prompt.text}])
        for config in args.configs:
            name, _, k = config.partition("@")
            if name in ("none", "spin"):  # the target alone; the server's policy choosing
                sp = SpecParams(drafter="none") if name == "none" else SpecParams()
            else:
                sp = SpecParams(name, int(k))
            out = engine.generate([ids], params, sp)[0]
            seconds = time.monotonic() - out.first_token_time
            row = {
                "category": prompt.category,
                "config": config,
                "decode_tokens": len(out.token_ids) - 1,
                "decode_s": seconds,
                "output_ids": out.token_ids,
            }
            print(json.dumps(row), flush=True)
    engine.close()


def run_tree(tree: Path, args: argparse.Namespace, extra: int | None) -> list[dict]:
    cmd = [sys.executable, __file__, "--child", *_child_flags(args, extra)]
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: the child failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _child_flags(args: argparse.Namespace, extra: int | None) -> list[str]:
    flags = ["--configs", *args.configs, "--max-tokens", str(args.max_tokens)]
    flags += ["--threads", str(args.threads), "--spec-bench", str(Path(args.spec_bench).resolve())]
    if extra is not None:
        flags += ["--extra-rounds", str(extra)]
    return flags


def report(runs: dict[str, list[list[dict]]], trees: list[str]) -> dict:
    """Tokens/s per tree and configuration; the second tree over the first per round; and,
    where the target alone (``none``) ran, each configuration over it in the same process
    (processes differ by several percent, so a drafter's speedup is read within one)."""
    reference = {r["category"]: r["output_ids"] for r in runs[trees[0]][0] if r["config"] == "none"}
    summary: dict = defaultdict(dict)
    mismatches = 0
    for tree in trees:
        for config in {r["config"] for rnd in runs[tree] for r in rnd}:
            rates = []
            for rnd in runs[tree]:
                rows = [r for r in rnd if r["config"] == config]
                mismatches += sum(r["output_ids"] != reference[r["category"]] for r in rows)
                tokens = sum(r["decode_tokens"] for r in rows)
                rates.append(tokens / sum(r["decode_s"] for r in rows))
            summary[config][tree] = {"tokens_per_s": statistics.mean(rates), "per_round": rates}
    for per_tree in summary.values():
        a, b = (per_tree[t]["per_round"] for t in trees)
        per_tree["ratio_per_round"] = [y / x for x, y in zip(a, b, strict=True)]
    if "none" in summary:
        for per_tree in summary.values():
            for tree in trees:
                alone = summary["none"][tree]["per_round"]
                own = per_tree[tree]["per_round"]
                per_tree[tree]["over_target_alone"] = statistics.mean(
                    x / y for x, y in zip(own, alone, strict=True)
                )
    return {"summary": dict(summary), "num_mismatched_outputs": mismatches}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trees", nargs=2, type=Path, help="base tree, then the changed one")
    p.add_argument("--configs", nargs="+", default=["none", "smollm2-135m-instruct@2"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--extra-rounds", type=int, nargs="+", default=None)
    spec_bench = HERE.parent / "spinserve/bench/data/spec_bench/question_dev.jsonl"
    p.add_argument("--spec-bench", default=str(spec_bench))
    p.add_argument("--out", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--render", type=Path, help="recompute the summary of a saved run")
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.render:
        saved = json.loads(args.render.read_text())
        saved.update(report(saved["runs"], list(saved["trees"])))
        args.render.write_text(json.dumps(saved, indent=1) + "\n")
        return None
    if not args.trees or not args.out:
        p.error("--trees and --out are required")
    trees = [str(t) for t in args.trees]
    extras = args.extra_rounds or [None]
    if len(extras) > 2:
        p.error("--extra-rounds takes one value, or one per tree")
    extras = extras if len(extras) == 2 else extras * 2
    if trees[0] == trees[1]:  # one tree, two settings: name them apart
        trees = [f"{t} (extra rounds {e})" for t, e in zip(trees, extras, strict=True)]
    paths = dict(zip(trees, args.trees, strict=True))
    settings = dict(zip(trees, extras, strict=True))
    runs: dict[str, list[list[dict]]] = {t: [] for t in trees}
    for rnd in range(args.rounds):
        order = trees if rnd % 2 == 0 else trees[::-1]
        for tree in order:
            start = time.perf_counter()
            runs[tree].append(run_tree(paths[tree], args, settings[tree]))
            print(f"round {rnd + 1}, {tree}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    result = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": machine_info(args.threads),
        "trees": {t: _commit(paths[t]) for t in trees},
        **report(runs, trees),
        "runs": runs,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for config, per_tree in result["summary"].items():
        rates = " ".join(f"{per_tree[t]['tokens_per_s']:.2f}" for t in trees)
        ratios = ", ".join(f"{r:.3f}" for r in per_tree["ratio_per_round"])
        print(f"{config:34s} tokens/s {rates}  second/first per round {ratios}")
    mismatched = result["num_mismatched_outputs"]
    print(f"outputs differing from the first tree's target alone: {mismatched}")


def _commit(tree: Path) -> str:
    proc = subprocess.run(
        ["git", "-C", str(tree), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return proc.stdout.strip()


if __name__ == "__main__":
    main()

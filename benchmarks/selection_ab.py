"""Selection configurations side by side at one load level, alternating rounds.

`selection_bench.py` times each configuration once, minutes apart, and this machine drifts by
more than the gaps it measures under load; this times a few of them back to back, on the
same prompts, ``--rounds`` times (a fresh engine each time). ``spin[KEY=VALUE,...]`` names
spin with some `SpinParams` changed, e.g. ``spin[explore_under_load=False]``.

Reproduce (from the repository root; ~4 minutes for the default 14 prompts and 2 rounds)::

    .venv/bin/python benchmarks/selection_ab.py --configs target spin --rounds 2 \\
        --concurrency 8 --per-category 2 --max-tokens 64 --threads 2

Every other flag is `selection_bench.py`'s; ``--concurrency`` sets the level, or ``--batch-1``
runs the prompts one at a time.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import time

import torch
from selection_bench import BATCH1, Bench, ChoiceRecorder, log, parse_args, run_requests

from spinserve.config.sampling import SamplingParams
from spinserve.engine.engine import LLMEngine
from spinserve.selection.spin import SpinParams, SpinPolicy


def spin_params(spec: str) -> SpinParams:
    """``KEY=VALUE,...`` -> SpinParams with those fields changed (values as Python literals:
    ``explore_under_load=False``, ``exploration=0.25``)."""
    changes = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        changes[key.strip()] = ast.literal_eval(value.strip())
    return dataclasses.replace(SpinParams(), **changes)


def make_engine(bench: Bench, name: str, level: str) -> LLMEngine:
    """`Bench.engine`, or for ``spin[...]`` a spin engine whose policy is rebuilt with those
    parameters and calibrated as the engine calibrates its own."""
    base, _, spec = name.partition("[")
    engine = bench.engine(base, level)
    if spec:
        policy = SpinPolicy(list(engine.drafters), spin_params(spec.rstrip("]")))
        policy.calibrate(engine._measure_steps(), engine._measure_drafters())
        engine.policy = ChoiceRecorder(policy)
    return engine


def main(argv: list[str] | None = None) -> None:
    own = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    own.add_argument(
        "--configs",
        nargs="+",
        default=["target", "spin"],
        metavar="NAME",
        help="configurations; spin[KEY=VALUE,...] is spin with those SpinParams changed",
    )
    own.add_argument("--rounds", type=int, default=2)
    own.add_argument(
        "--batch-1",
        action="store_true",
        help="run the prompts one at a time (batch 1) instead of at --concurrency",
    )
    ab, rest = own.parse_known_args(argv)
    args = parse_args(rest)  # selection_bench's flags; --concurrency is the level
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    params = SamplingParams(max_tokens=args.max_tokens)
    level = BATCH1 if ab.batch_1 else f"c{args.concurrency}"
    print("| round | configuration | tokens | seconds | tokens/s |\n|---:|---|---:|---:|---:|")
    for rnd in range(1, ab.rounds + 1):
        for name in ab.configs:
            engine = make_engine(bench, name, level)
            start = time.perf_counter()
            if ab.batch_1:  # one at a time, in order, as selection_bench's b1 level
                by_id = {}
                for item in bench.items:
                    by_id |= run_requests(engine, [item], params)
            else:
                by_id = run_requests(engine, bench.items, params)
            seconds = time.perf_counter() - start
            tokens = sum(len(r["output_ids"]) for r in by_id.values())
            log(f"round {rnd} {name}: {tokens} tokens in {seconds:.1f} s")
            print(f"| {rnd} | {name} | {tokens} | {seconds:.1f} | {tokens / seconds:.2f} |")


if __name__ == "__main__":
    main()

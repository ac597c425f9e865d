"""Selection configurations side by side at one load level, alternating rounds.

`selection_bench.py` times each configuration once, minutes apart, and this machine drifts by
more than the gaps it measures under load; this times a few of them back to back, on the
same prompts, ``--rounds`` times (a fresh engine each time). ``spin[KEY=VALUE,...]`` names
spin with some of its parameters changed, the shipped ones (`SpinParams`) or the research
variants' (`research.selection.params.VariantParams`), e.g. ``spin[explore_under_load=True]``.

Reproduce (from the repository root; ~4 minutes for the default 14 prompts and 2 rounds)::

    .venv/bin/python benchmarks/selection_ab.py --configs target spin --rounds 2 \\
        --concurrency 8 --per-category 2 --max-tokens 64 --threads 2

Every other flag is `selection_bench.py`'s; ``--concurrency`` sets the level, or ``--batch-1``
runs the prompts one at a time. It reports each round's tokens/s and, per category, tokens/s
per request over all rounds (a request's tokens over its seconds from submission to finish)
with the ratios to the first configuration. ``--batch-1 --interleave`` goes further: one
engine per configuration (fresh each round), and each prompt runs in every configuration in
turn before the next prompt (the order alternating), so configurations seconds apart meet the
same machine; it reports tokens/s per category and the ratios to the first configuration
(``target``); ``--choices`` also logs each request's tokens/s and choices::

    .venv/bin/python benchmarks/selection_ab.py --configs target fixed:ngram spin --rounds 2 \
        --batch-1 --interleave --per-category 2 --max-tokens 64 --threads 2
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from selection_bench import BATCH1, Bench, ChoiceRecorder, log, parse_args, run_requests

from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import NO_DRAFTER, SpecParams
from spinserve.engine.engine import LLMEngine

# research/ sits beside spinserve/ and is not installed: import it from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from research.selection.params import VariantParams
from research.selection.variants import VariantPolicy


def spin_params(spec: str) -> VariantParams:
    """``KEY=VALUE,...`` -> VariantParams with those fields changed (values as Python literals:
    ``explore_under_load=False``, ``exploration=0.25,draft_lengths=(1,2,3,4)``)."""
    try:
        return dataclasses.replace(VariantParams(), **_changes(spec))
    except (TypeError, ValueError, SyntaxError) as e:  # an unknown knob or a bad value
        raise SystemExit(f"spin[{spec}]: {e}") from None


def _changes(spec: str) -> dict[str, object]:
    changes = {}
    # a comma starts the next item only where a KEY= follows: values may hold commas
    for item in filter(None, re.split(r",\s*(?=\w+\s*=)", spec)):
        key, _, value = item.partition("=")
        changes[key.strip()] = ast.literal_eval(value.strip())
    return changes


def make_engine(bench: Bench, name: str, level: str) -> LLMEngine:
    """`Bench.engine`, or for ``spin[...]`` a spin engine whose policy is rebuilt with those
    parameters and calibrated as the engine calibrates its own."""
    base, _, spec = name.partition("[")
    engine = bench.engine(base, level)
    if spec:
        policy = VariantPolicy(list(engine.drafters), spin_params(spec.rstrip("]")))
        policy.calibrate(*engine.measure_costs())
        engine.policy = ChoiceRecorder(policy)
    return engine


def main(argv: list[str] | None = None) -> None:
    own = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    own.add_argument(
        "--configs",
        nargs="+",
        default=["target", "spin"],
        metavar="NAME",
        help="configurations; spin[KEY=VALUE,...] is spin with those VariantParams changed",
    )
    own.add_argument("--rounds", type=int, default=2)
    own.add_argument(
        "--batch-1",
        action="store_true",
        help="run the prompts one at a time (batch 1) instead of at --concurrency",
    )
    own.add_argument(
        "--interleave",
        action="store_true",
        help="with --batch-1: each prompt in every configuration in turn; per-category table",
    )
    own.add_argument(
        "--choices",
        action="store_true",
        help="with --interleave: log each request's tokens/s and choices per configuration",
    )
    ab, rest = own.parse_known_args(argv)
    args = parse_args(rest)  # selection_bench's flags; --concurrency is the level
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    params = SamplingParams(max_tokens=args.max_tokens)
    level = BATCH1 if ab.batch_1 else f"c{args.concurrency}"
    if ab.interleave:
        if not ab.batch_1:
            raise SystemExit("--interleave needs --batch-1")
        interleaved(bench, ab.configs, ab.rounds, params, ab.choices)
        return
    print("| round | configuration | tokens | seconds | tokens/s |\n|---:|---|---:|---:|---:|")
    # per request: tokens over its own seconds (from submission to finish), as
    # selection_bench's per-category figures; the rounds' totals are the throughput
    totals: dict[str, dict[str, list[float]]] = {
        n: defaultdict(lambda: [0, 0.0]) for n in ab.configs
    }
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
            for rid, record in by_id.items():
                for key in (rid.split(":")[0], "all"):
                    totals[name][key][0] += len(record["output_ids"])
                    totals[name][key][1] += record["wall_s"]
            log(f"round {rnd} {name}: {tokens} tokens in {seconds:.1f} s")
            print(f"| {rnd} | {name} | {tokens} | {seconds:.1f} | {tokens / seconds:.2f} |")
    print("\nPer category, tokens/s per request over all rounds:\n")
    category_table(totals, ab.configs)


def interleaved(
    bench: Bench, configs: list[str], rounds: int, params: SamplingParams, verbose: bool = False
) -> None:
    """Each prompt at batch 1 in every configuration in turn; tokens/s per category (a
    category's tokens over its requests' seconds, all rounds) and the ratio to configs[0];
    with ``verbose``, each request's tokens/s and choices (runs of ``LABELxSTEPS``) logged."""
    totals: dict[str, dict[str, list[float]]] = {n: defaultdict(lambda: [0, 0.0]) for n in configs}
    mismatches = 0
    for rnd in range(1, rounds + 1):
        engines = {name: make_engine(bench, name, BATCH1) for name in configs}
        # each engine warmed up again once all are built, untimed, past its policy (nothing
        # learned): the first timed request after the others' start-up ran up to 4x slow
        # (8 tokens in 2.3 s against 0.5 s)
        warm = SamplingParams(max_tokens=bench.args.warmup_tokens)
        for name in configs:
            engines[name].generate([bench.warm_ids], warm, SpecParams(drafter=NO_DRAFTER))
        for i, item in enumerate(bench.items):
            order = configs if (i + rnd) % 2 == 0 else configs[::-1]
            outputs, notes = {}, []
            for name in order:
                start = time.perf_counter()
                record = run_requests(engines[name], [item], params)[item[0]]
                seconds = time.perf_counter() - start
                outputs[name] = record["output_ids"]
                runs = " ".join(f"{label}x{n}" for label, n in record["choice_trace"])
                notes.append(f"{name} {len(outputs[name]) / seconds:.1f} tok/s [{runs}]")
                for key in (item[0].split(":")[0], "all"):
                    totals[name][key][0] += len(record["output_ids"])
                    totals[name][key][1] += seconds
            differ = [n for n in configs if outputs[n] != outputs[configs[0]]]
            mismatches += len(differ)
            log(
                f"round {rnd}: prompt {i + 1}/{len(bench.items)} {item[0]} done"
                + (f"; OUTPUT DIFFERS from {configs[0]}'s: {differ}" if differ else "")
            )
            if verbose:
                for note in notes:
                    log(f"  {note}")
    category_table(totals, configs)
    runs = rounds * len(bench.items) * len(configs)
    print(f"\nOutputs equal to {configs[0]}'s: {runs - mismatches}/{runs} requests.")


def category_table(totals: dict[str, dict[str, list[float]]], configs: list[str]) -> None:
    """tokens/s per category (``totals[config][category] = [tokens, seconds]``) and each
    configuration's ratio to configs[0], as a markdown table."""
    categories = [*sorted(k for k in totals[configs[0]] if k != "all"), "all"]
    print("| configuration | " + " | ".join(categories) + " |")
    print("|---|" + "---:|" * len(categories))
    rate = {n: {c: totals[n][c][0] / totals[n][c][1] for c in categories} for n in configs}
    for name in configs:
        print(f"| {name} | " + " | ".join(f"{rate[name][c]:.2f}" for c in categories) + " |")
    for name in configs[1:]:
        ratios = " | ".join(f"{rate[name][c] / rate[configs[0]][c]:.2f}x" for c in categories)
        print(f"| {name} / {configs[0]} | {ratios} |")


if __name__ == "__main__":
    main()

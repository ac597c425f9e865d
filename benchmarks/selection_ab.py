"""Two selection configurations side by side at one load level, alternating rounds.

`selection_bench.py` times each configuration once, minutes apart, and this machine drifts by
more than the gaps it measures under load; this times just two of them back to back, on the
same prompts, ``--rounds`` times (a fresh engine each time).

Reproduce (from the repository root; ~4 minutes for the default 14 prompts and 2 rounds)::

    .venv/bin/python benchmarks/selection_ab.py --configs target spin --rounds 2 \\
        --concurrency 8 --per-category 2 --max-tokens 64 --threads 2

Every other flag is `selection_bench.py`'s; ``--concurrency`` sets the level.
"""

from __future__ import annotations

import argparse
import time

import torch
from selection_bench import Bench, log, parse_args, run_requests

from spinserve.config.sampling import SamplingParams


def main(argv: list[str] | None = None) -> None:
    own = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    own.add_argument("--configs", nargs=2, default=["target", "spin"], metavar="NAME")
    own.add_argument("--rounds", type=int, default=2)
    ab, rest = own.parse_known_args(argv)
    args = parse_args(rest)  # selection_bench's flags; --concurrency is the level
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    params = SamplingParams(max_tokens=args.max_tokens)
    level = f"c{args.concurrency}"
    print("| round | configuration | tokens | seconds | tokens/s |\n|---:|---|---:|---:|---:|")
    for rnd in range(1, ab.rounds + 1):
        for name in ab.configs:
            engine = bench.engine(name, level)
            start = time.perf_counter()
            by_id = run_requests(engine, bench.items, params)
            seconds = time.perf_counter() - start
            tokens = sum(len(r["output_ids"]) for r in by_id.values())
            log(f"round {rnd} {name}: {tokens} tokens in {seconds:.1f} s")
            print(f"| {rnd} | {name} | {tokens} | {seconds:.1f} | {tokens / seconds:.2f} |")


if __name__ == "__main__":
    main()

"""Can this CPU overlap drafting with verification? The bound on pipelining (SPIN's third part).

Reproduce (from the repository root; ~2 minutes on 2 cores)::

    .venv/bin/python benchmarks/pipeline_probe.py --out benchmarks/results/pipeline_probe.json

Pipelining splits the batch in two and drafts for one half while the target verifies the
other. It can only pay if the two can run at once faster than one after the other. This
times, on the default pair (Qwen2.5-Coder-1.5B target, its 0.5B drafter; weights as served):

- ``sequential``: the target's verification forward of ``--batch`` sequences x (1 + k) tokens
  at context ``--context``, then the drafter's k rounds for the same sequences, each on all
  the cores (torch's threads = cores), as the engine runs a step today;
- ``overlapped``: the same two calls at once on two threads, the cores split between them
  (``--split``: threads for the target, the rest for the drafter): the best a pipeline can do,
  with no bubbles and no scheduling cost;
- each call alone on its share of the cores, for reference.

A ratio overlapped / sequential at or above 1.0 means no pipeline can win on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peers_manifest import cpu

from spinserve.config.engine import RuntimeConfig
from spinserve.config.sampling import SamplingParams
from spinserve.loading import zoo
from spinserve.loading.loader import load
from spinserve.runtime.runner import ModelRunner
from spinserve.speculative.draft_model import DraftJob, DraftModel
from spinserve.types.batch import SeqChunk, StepBatch

GREEDY = SamplingParams(max_tokens=1)


def median_time(fn: Callable[[], object], reps: int) -> float:
    fn()  # untimed: pages in weights, warms caches
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--split", type=int, default=1, help="threads for the target")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    cores = torch.get_num_threads()
    target = load(zoo.DEFAULT_TARGET)
    drafter_name = "qwen2.5-coder-0.5b-instruct"
    drafter = load(drafter_name, RuntimeConfig(weights=RuntimeConfig().drafter_weights))
    bs = 16
    per_seq = -(-(args.context + args.k + 1) // bs)
    runner = ModelRunner(target.model, per_seq * args.batch, bs)
    draft_model = DraftModel(drafter.model, 0.5, kv_cache_dtype="float16", prefix_caching=False)
    g = torch.Generator().manual_seed(0)
    contexts = [
        torch.randint(100, 20000, (args.context,), generator=g).tolist() for _ in range(args.batch)
    ]
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(args.batch)]
    for ids, table in zip(contexts, tables, strict=True):  # prefill each context once
        runner.execute(StepBatch([SeqChunk("p", ids, 0, table, 1)]))
    verify = StepBatch(
        [
            SeqChunk(f"s{i}", [7] * (args.k + 1), args.context, tables[i], args.k + 1)
            for i in range(args.batch)
        ]
    )
    jobs = [DraftJob(f"s{i}", ids, args.k, GREEDY) for i, ids in enumerate(contexts)]
    draft_model.draft(jobs)  # catch up once; later calls roll back to the context and redraft

    def target_call() -> None:
        runner.execute(verify)

    def drafter_call() -> None:
        draft_model.draft(jobs)

    def on_threads(fn: Callable[[], None], threads: int) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(threads)
            fn()

        return run

    def overlapped() -> None:
        workers = [
            threading.Thread(target=on_threads(target_call, args.split)),
            threading.Thread(target=on_threads(drafter_call, cores - args.split)),
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    torch.set_num_threads(cores)
    t_target = median_time(target_call, args.reps)
    t_draft = median_time(drafter_call, args.reps)
    t_over = median_time(overlapped, args.reps)
    torch.set_num_threads(args.split)
    t_target_share = median_time(target_call, args.reps)
    torch.set_num_threads(cores - args.split)
    t_draft_share = median_time(drafter_call, args.reps)
    torch.set_num_threads(cores)
    sequential = t_target + t_draft
    result = {
        "command": ".venv/bin/python benchmarks/pipeline_probe.py --out " + str(args.out),
        "machine": cpu(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"cores": cores},
        "seconds": {
            "target_all_cores": t_target,
            "drafter_all_cores": t_draft,
            "sequential": sequential,
            "overlapped": t_over,
            "target_on_its_share": t_target_share,
            "drafter_on_its_share": t_draft_share,
        },
        "overlapped_over_sequential": t_over / sequential,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["seconds"], indent=1), result["overlapped_over_sequential"])


if __name__ == "__main__":
    main()

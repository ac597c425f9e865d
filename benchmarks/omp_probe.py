"""Where an engine's model work runs, and what OpenMP makes of it: the target's decode and a
SmolLM2 drafting call (k = 2, three rounds), alternating, under each thread layout.

Reproduce (from the repository root; ~3 minutes)::

    .venv/bin/python benchmarks/omp_probe.py --pairs 35 --out benchmarks/results/omp_probe.json

Layouts, each in a fresh process (OpenMP pools live as long as their threads):

- ``threads``: the target on the calling thread, the drafter on a thread of its own (the
  engine before its compute lane);
- ``threads+release``: the same, each thread letting go of its OpenMP pool after every call;
- ``lane``: both on one worker thread, the loading thread's pool let go (the engine now);
- ``one-thread``: both on the loading thread itself (the reference: one pool, nothing else);
- ``threads`` again under ``OMP_WAIT_POLICY=active`` and ``passive``, and the drafter alone
  on its thread under ``active`` (``drafter-alone``).

Per layout: the median over ``--pairs`` pairs (after 5 untimed) of the target's decode at
context 200 and of the drafter's call on a growing context of 150+ tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from step_bench import machine_info

LAYOUTS = {
    "threads": {},
    "threads+release": {},
    "lane": {},
    "one-thread": {},
    "threads, OMP_WAIT_POLICY=active": {"OMP_WAIT_POLICY": "active"},
    "threads, OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
    "drafter-alone, OMP_WAIT_POLICY=active": {"OMP_WAIT_POLICY": "active"},
}
TARGET, DRAFTER = "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"


def child(layout: str, pairs: int) -> dict:
    import torch

    from spinserve.config.sampling import SamplingParams
    from spinserve.config.speculative import SpeculativeConfig
    from spinserve.engine.compute_lane import LaneWorker
    from spinserve.loading.loader import load
    from spinserve.runtime.runner import ModelRunner
    from spinserve.runtime.threads import release_openmp_workers
    from spinserve.speculative.drafter import DraftRequest
    from spinserve.speculative.registry import build_drafter
    from spinserve.types.batch import SeqChunk, StepBatch

    torch.set_num_threads(2)
    target = load(TARGET, fetch_missing=False)
    drafter = build_drafter(DRAFTER, target, SpeculativeConfig())
    runner = ModelRunner(target.model, 64, 16)
    ids = target.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 20)
    table = list(range(14))
    runner.execute(StepBatch([SeqChunk("t", ids[:200], 0, table, 1)]))
    release = layout.startswith("threads+release")
    own = LaneWorker(2, "probe-drafter")  # the drafter's own thread
    lane = LaneWorker(2, "probe-lane")
    if layout == "lane":
        release_openmp_workers()

    def decode() -> None:
        runner.execute(StepBatch([SeqChunk("t", ids[:1], 200, table, 1)]))
        if release:
            release_openmp_workers()

    def draft(context: list[int]) -> None:
        drafter.propose([DraftRequest("d", context, 2, SamplingParams(max_tokens=8))])
        if release:
            release_openmp_workers()

    def timed(fn, *args) -> float:
        start = time.perf_counter()
        if layout == "lane":
            lane.submit(fn, *args).result()
        elif layout == "one-thread":
            fn(*args)
        elif fn is draft:
            own.submit(fn, *args).result()
        else:
            fn(*args)
        return time.perf_counter() - start

    decodes, drafts = [], []
    context = list(ids[:150])
    for i in range(pairs + 5):
        context = [*context, ids[150 + i % 50]]
        if not layout.startswith("drafter-alone"):
            decodes.append(timed(decode))
        drafts.append(timed(draft, context))
    return {"decode_ms": _median_ms(decodes[5:]), "draft_ms": _median_ms(drafts[5:])}


def _median_ms(seconds: list[float]) -> float | None:
    return 1000 * statistics.median(seconds) if seconds else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=35)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.pairs)))
        return
    results = {}
    for layout, env in LAYOUTS.items():
        cmd = [sys.executable, __file__, "--child", layout, "--pairs", str(args.pairs)]
        proc = subprocess.run(
            cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise SystemExit(f"{layout}: {proc.stderr[-2000:]}")
        results[layout] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{layout:40s} {results[layout]}", file=sys.stderr)
    out = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": machine_info(2),
        "target": TARGET,
        "drafter": DRAFTER,
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Our model step against llama.cpp's, call for call: interleaved, so both see the same machine.

Reproduce (from the repository root; ~3 minutes; needs ``pip install '.[llamacpp]'``)::

    .venv/bin/python benchmarks/decode_ab.py \\
        --models qwen2.5-coder-1.5b-instruct qwen2.5-coder-0.5b-instruct smollm2-135m-instruct \\
        --pairs 60 --context 128 --threads 2 --out results/decode_ab.json

Why: this shared machine's speed drifts by up to ~1.5x over stretches of seconds (other
tenants' memory traffic), so two implementations timed one after the other, even minutes
apart in one `step_bench.py` run, can differ by the drift alone. Here both are loaded in one
process, each with one request of ``--context`` random tokens in its cache, and each pair of
calls runs one step of ours and one of llama.cpp's back to back (which goes first alternates;
a 5 ms pause before each call lets the other's spinning threads go idle). For each case
(``decode_1x1``: 1 new token; ``verify_1x8``: 8 new tokens, logits for all 8) the report gives
each side's median time and the median of the per-pair ratios ours / llama.cpp, with the
share of pairs where ours was faster.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import llamacpp_step
import numpy as np
import torch
from step_bench import BLOCK_SIZE, VERIFY_TOKENS, Workload, log

from spinserve.config.engine import RuntimeConfig
from spinserve.loading import loader, zoo
from spinserve.runtime.runner import ModelRunner
from spinserve.types.batch import SeqChunk, StepBatch

PAUSE_S = 0.005


def bench_model(name: str, args: argparse.Namespace) -> dict:
    runtime = RuntimeConfig(weights="auto")
    loaded = loader.load(name, runtime, cache_dir=args.cache_dir, fetch_missing=False)
    model = loaded.model
    work = Workload.make(model.config.vocab_size, args.context)
    blocks = list(range(math.ceil((args.context + VERIFY_TOKENS) / BLOCK_SIZE)))
    runner = ModelRunner(model, len(blocks), BLOCK_SIZE)
    prompt, new = work.prompts[0].tolist(), work.new_ids[0].tolist()
    runner.execute(StepBatch([SeqChunk("r", prompt, 0, blocks, 1)]))
    c = args.context
    ours = {
        "decode_1x1": StepBatch([SeqChunk("r", new[:1], c, blocks, 1)]),
        "verify_1x8": StepBatch([SeqChunk("r", new, c, blocks, VERIFY_TOKENS)]),
    }
    step = llamacpp_step.LlamaCppStep(zoo.gguf_path(name, args.cache_dir), args.threads, 1, c + 64)
    try:
        step.prefill([prompt])
        theirs = {"decode_1x1": step.case([new[:1]], c), "verify_1x8": step.case([new], c)}
        cases = {}
        for case in ours:

            def run_ours(batch=ours[case]) -> None:
                runner.execute(batch)  # it writes the same cache slots again each time

            def roll_back() -> None:
                step.roll_back(1, c)

            cases[case] = interleave((run_ours, None), (theirs[case], roll_back), args)
            r = cases[case]
            log(
                f"{name}/{case}: ours {r['ours_ms']:.1f} ms, llama.cpp {r['llamacpp_ms']:.1f} ms, "
                f"ratio {r['ratio']:.2f}, ours faster in {r['ours_faster']:.0%} of pairs"
            )
    finally:
        step.close()
    return cases


def interleave(ours, theirs, args: argparse.Namespace) -> dict:
    """Warm both up, then time ``--pairs`` pairs of calls, alternating which goes first.
    ``ours`` and ``theirs`` are (step, reset after it, untimed, or None)."""
    for _ in range(3):
        for run, reset in (ours, theirs):
            run()
            if reset:
                reset()
    t_ours, t_theirs = [], []
    for i in range(args.pairs):
        pair = ((ours, t_ours), (theirs, t_theirs))
        for (run, reset), times in pair[:: 1 if i % 2 == 0 else -1]:
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3)
            if reset:
                reset()
    a, b = np.array(t_ours), np.array(t_theirs)
    return {
        "ours_ms": float(np.median(a)),
        "llamacpp_ms": float(np.median(b)),
        "ratio": float(np.median(a / b)),
        "ours_faster": float(np.mean(a < b)),
        "ours_times_ms": a.tolist(),
        "llamacpp_times_ms": b.tolist(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["qwen2.5-coder-1.5b-instruct"])
    p.add_argument("--pairs", type=int, default=60)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("results/decode_ab.json"))
    args = p.parse_args()
    if args.pairs < 1 or args.context < 1 or args.threads < 1:
        p.error("--pairs, --context and --threads must be at least 1")
    if not llamacpp_step.available():
        p.error("llama-cpp-python is not installed: pip install '.[llamacpp]'")
    args.cache_dir = zoo.resolve_cache_dir(str(args.cache_dir) if args.cache_dir else None)
    torch.set_num_threads(args.threads)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    report = {"started": started, "args": {k: str(v) for k, v in vars(args).items()}}
    report["models"] = {name: bench_model(name, args) for name in args.models}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("| model | case | ours ms | llama.cpp ms | ours / llama.cpp, per pair | faster |")
    print("|---|---|---:|---:|---:|---:|")
    for name, cases in report["models"].items():
        for case, r in cases.items():
            print(
                f"| {name} | {case} | {r['ours_ms']:.1f} | {r['llamacpp_ms']:.1f} | "
                f"{r['ratio']:.2f} | {r['ours_faster']:.0%} |"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

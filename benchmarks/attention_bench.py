"""Our row attention kernel's cost per layer, for the served models' head shapes.

Reproduce (from the repository root; ~20 seconds on the 2-core machine)::

    .venv/bin/python benchmarks/attention_bench.py --threads 2 --out results/attention_bench.json

For each model shape (query heads, kv heads, head dim) and each (rows, context) case, one call
of `spinserve.ops.attention.row_attention` over random fp32 keys and values: ``rows`` query
rows, the last at position ``context`` (a decode is 1 row, a verification of 8 draft tokens 8
rows, each seeing its own prefix). Each case runs ``--repeats`` rounds of ``--calls`` calls;
the fastest round's time per call is reported (µs; the minimum is the least disturbed by the
shared machine), with the per-step total (x the model's layers).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from spinserve.ops.attention import RowKeys, SeqSpan, row_attention, row_keys

# name: (query heads, kv heads, head dim, layers)
SHAPES = {
    "qwen2.5-coder-1.5b": (12, 2, 128, 28),
    "qwen2.5-coder-0.5b": (14, 2, 64, 24),
    "smollm2-135m": (9, 3, 64, 30),
}
CASES = ((1, 128), (1, 512), (1, 2048), (8, 136), (8, 520))


def time_case(heads: int, kv_heads: int, dim: int, rows: int, context: int, args) -> float:
    gen = torch.Generator().manual_seed(0)
    k_cache = torch.randn(context, kv_heads, dim, generator=gen).to(args.kv_dtype)
    v_cache = torch.randn(context, kv_heads, dim, generator=gen).to(args.kv_dtype)
    q = torch.randn(rows, heads, dim, generator=gen)
    start = context - rows
    keys = RowKeys.of([SeqSpan(0, rows, slice(0, context), None, row_keys(start, rows, 0, None))])
    scale = dim**-0.5
    for _ in range(10):
        row_attention(q, k_cache, v_cache, keys, scale)
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.calls):
            row_attention(q, k_cache, v_cache, keys, scale)
        best = min(best, (time.perf_counter() - t0) / args.calls)
    return best * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument(
        "--kv-cache-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="the keys' and values' dtype in the cache",
    )
    p.add_argument("--out", type=Path, default=Path("results/attention_bench.json"))
    args = p.parse_args()
    if args.threads < 1 or args.repeats < 1 or args.calls < 1:
        p.error("--threads, --repeats and --calls must be at least 1")
    torch.set_num_threads(args.threads)
    args.kv_dtype = getattr(torch, args.kv_cache_dtype)
    results = []
    print("| model shape | rows | context | µs per layer | ms per step |")
    print("|---|---:|---:|---:|---:|")
    for name, (heads, kv_heads, dim, layers) in SHAPES.items():
        for rows, context in CASES:
            us = time_case(heads, kv_heads, dim, rows, context, args)
            results.append(
                {"shape": name, "rows": rows, "context": context, "us_per_layer": us,
                 "ms_per_step": us * layers / 1e3}
            )  # fmt: skip
            print(f"| {name} | {rows} | {context} | {us:.1f} | {us * layers / 1e3:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"threads": args.threads, "kv_cache_dtype": args.kv_cache_dtype, "results": results},
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

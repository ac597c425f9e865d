"""Two builds of our kernels, the whole model step, call for call in one process.

Reproduce (from the repository root; ~1 minute per model)::

    .venv/bin/python benchmarks/kernel_ab.py --old-rev 5d65735 \\
        --models qwen2.5-coder-1.5b-instruct --tokens 1 2 3 5 9 --pairs 21

Why: this shared machine's speed drifts by up to ~1.5x over seconds, more than most kernel
changes are worth, so two builds timed in two runs compare the drift. Here the kernels of
``--old-rev`` (``spinserve/ops/csrc`` at that git revision) are built under a second torch.ops
namespace and loaded beside the working tree's; one model is loaded once, each build's side
holds one request of ``--context`` random tokens in its own cache, and each pair of calls
runs the same step (``n`` new tokens after the context) on the old and on the new kernels
back to back, which goes first alternating. Before timing, each step's logits are compared:
equal bits unless the change was meant to move them (then the largest difference is
printed). The report: each build's median per step and relative to its own 1-token step, and
the median of the per-pair ratios new / old.

``--row-layout`` compares weight layouts instead of revisions: the "old" side is the same
kernels with the 32-weight blocks (Q4_0, Q4_1, Q5_0, Q8_0) kept in GGUF's row layout, loaded
as a second copy of the model (packed to a temporary file), against the interleaved layout
the loader keeps (``ops/interleave.py``)::

    .venv/bin/python benchmarks/kernel_ab.py --row-layout \
        --models qwen2.5-coder-0.5b-instruct --tokens 1 2 3 5 9 --pairs 21

Only the models whose layers run in one call of our kernel (`LayerStack`: the Qwen pair and
SmolLM2 with their default weights) are switched whole; the lm_head and anything else that
calls a kernel through `native.load` follows the switch too.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import torch
from step_bench import BLOCK_SIZE, Workload, log

from spinserve.config.engine import RuntimeConfig
from spinserve.loading import loader
from spinserve.ops import interleave, native
from spinserve.runtime.runner import ModelRunner
from spinserve.types.batch import SeqChunk, StepBatch

OLD_NAMESPACE = "spinserve_ab_old"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    old = p.add_mutually_exclusive_group(required=True)
    old.add_argument("--old-rev", help="git revision of the old kernels")
    old.add_argument(
        "--row-layout",
        action="store_true",
        help="old: these kernels with 32-weight blocks in row layout (a second model copy)",
    )
    p.add_argument("--models", nargs="+", default=["qwen2.5-coder-1.5b-instruct"])
    p.add_argument(
        "--tokens",
        nargs="+",
        type=int,
        default=[1, 2, 3, 5, 9],
        help="new tokens per timed step (one request)",
    )
    p.add_argument("--pairs", type=int, default=21, help="timed pairs per step size")
    p.add_argument("--context", type=int, default=128, help="tokens already in the cache")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="JSON results")
    args = p.parse_args(argv)
    if 1 not in args.tokens:
        p.error("--tokens must include 1 (the decode the others are relative to)")
    if args.pairs < 1 or min(args.tokens) < 1:
        p.error("--pairs and --tokens must be positive")
    return args


def build_old(rev: str) -> None:
    """Build and load the kernels of ``rev`` under `OLD_NAMESPACE`: every ``.cpp`` of its
    ``spinserve/ops/csrc`` in one library (a revision with one library per file builds too:
    each file registers its own ops, and they meet in the one namespace)."""
    try:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", rev, "spinserve/ops/csrc"],
            check=True,
            capture_output=True,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout
    except subprocess.CalledProcessError as exc:
        message = exc.stderr.decode().strip()
        raise SystemExit(f"cannot read the kernels at {rev!r}: {message}") from None
    folder = Path(tempfile.mkdtemp(prefix="kernel_ab_"))
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    source = folder / "spinserve" / "ops" / "csrc"
    torch.ops.load_library(str(native.build_library(source, native.flags(OLD_NAMESPACE))))


def load_model(name: str, args: argparse.Namespace):
    return loader.load(
        name, RuntimeConfig(weights="auto"), cache_dir=args.cache_dir, fetch_missing=False
    ).model


def load_row_layout(name: str, args: argparse.Namespace):
    """``name`` with its 32-weight blocks in row layout (only the k-quants interleaved), packed
    to a temporary file (the cache's own packed file is left as it is)."""
    folder = Path(tempfile.mkdtemp(prefix="kernel_ab_rows_"))
    kept = {q: interleave.INTERLEAVED[q] for q in (interleave.Q4_K, interleave.Q6_K)}
    saved = interleave.INTERLEAVED, loader.packed_path
    interleave.INTERLEAVED = kept
    loader.packed_path = lambda _folder, form="int4": folder / f"{form}.safetensors"
    try:
        return load_model(name, args)
    finally:
        interleave.INTERLEAVED, loader.packed_path = saved


class Side:
    """One side of the comparison: a runner holding one request of ``context`` tokens, and
    how to make its kernels the ones that run."""

    def __init__(self, model, args: argparse.Namespace, select) -> None:
        self.select = select
        prompt = Workload.make(model.config.vocab_size, args.context).prompts[0].tolist()
        self.blocks = list(range(math.ceil((args.context + max(args.tokens)) / BLOCK_SIZE)))
        self.runner = ModelRunner(model, len(self.blocks), BLOCK_SIZE)
        select()
        self.runner.execute(StepBatch([SeqChunk("r", prompt, 0, self.blocks, 1)]))

    def run(self, batch_of) -> torch.Tensor:
        self.select()
        return self.runner.execute(batch_of(self.blocks))


def bench_model(name: str, args: argparse.Namespace) -> dict:
    real_load = native.load
    use_old = {"on": False}

    def load(variant: str = "native") -> str:
        return OLD_NAMESPACE if use_old["on"] else real_load(variant)

    native.load = load
    try:
        model = load_model(name, args)
        if model.layer_stack() is None:
            raise SystemExit(f"{name}: its layers do not run in one kernel call; nothing to switch")
        if args.row_layout:  # two models, one build
            sides = {
                False: Side(model, args, lambda: None),
                True: Side(load_row_layout(name, args), args, lambda: None),
            }
        else:  # one model, two builds
            stack = model.layer_stack()
            ops = {False: stack.op, True: getattr(torch.ops, OLD_NAMESPACE).decoder_layers}

            def use(old: bool):
                def select() -> None:
                    use_old["on"] = old
                    stack.op = ops[old]

                return select

            sides = {False: Side(model, args, use(False))}
            sides[True] = Side(model, args, use(True))
        times = time_steps(sides, model.config.vocab_size, args)
        sides[False].select()
    finally:
        native.load = real_load
    return report(name, *times)


def time_steps(sides: dict, vocab_size: int, args: argparse.Namespace):
    new = torch.randint(
        0, vocab_size, (max(args.tokens),), generator=torch.Generator().manual_seed(1)
    ).tolist()
    c = args.context
    steps = {
        n: (lambda blocks, n=n: StepBatch([SeqChunk("r", new[:n], c, blocks, n)]))
        for n in args.tokens
    }
    differences = {}
    for n, batch_of in steps.items():
        old_logits = sides[True].run(batch_of)
        new_logits = sides[False].run(batch_of)
        differences[n] = float((old_logits - new_logits).abs().max())
    times: dict[tuple[bool, int], list[float]] = {(o, n): [] for o in (0, 1) for n in steps}
    for i in range(args.pairs):
        for n, batch_of in steps.items():
            for old in (True, False) if i % 2 == 0 else (False, True):
                start = time.perf_counter()
                sides[old].run(batch_of)
                times[(old, n)].append(time.perf_counter() - start)
    return times, differences


def report(name: str, times: dict, differences: dict) -> dict:
    result = {"model": name, "cases": []}
    for n in differences:
        old_t, new_t = times[(True, n)], times[(False, n)]
        result["cases"].append(
            {
                "tokens": n,
                "old_ms": statistics.median(old_t) * 1e3,
                "new_ms": statistics.median(new_t) * 1e3,
                "old_vs_decode": statistics.median(old_t) / statistics.median(times[(True, 1)]),
                "new_vs_decode": statistics.median(new_t) / statistics.median(times[(False, 1)]),
                "new_over_old": statistics.median(b / a for a, b in zip(old_t, new_t, strict=True)),
                "max_logit_difference": differences[n],
            }
        )
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.old_rev:
        build_old(args.old_rev)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    results = []
    print(
        "| model | tokens | old ms | new ms | old / decode | new / decode | new / old per pair "
        "| max logit diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        log(f"{name}: {args.pairs} pairs per step size")
        result = bench_model(name, args)
        results.append(result)
        for case in result["cases"]:
            print(
                f"| {name} | {case['tokens']} | {case['old_ms']:.1f} | {case['new_ms']:.1f} | "
                f"{case['old_vs_decode']:.2f}x | {case['new_vs_decode']:.2f}x | "
                f"{case['new_over_old']:.3f} | {case['max_logit_difference']:.3g} |",
                flush=True,
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "started": started,
                    "settings": {
                        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                    },
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

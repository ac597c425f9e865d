"""Model-step benchmark: our `ModelRunner` in each weight form against transformers' own model
and llama.cpp, side by side.

Reproduce (from the repository root; ~12 minutes on the quiet 2-core dev machine, longer while
it waits for other processes to leave the CPU; ``llamacpp`` needs ``pip install '.[llamacpp]'``
and is skipped without it)::

    .venv/bin/python benchmarks/step_bench.py \\
        --models qwen2.5-coder-1.5b-instruct qwen2.5-coder-0.5b-instruct smollm2-135m-instruct \\
        --impls ours ours-int4 hf llamacpp \\
        --context 128 --warmup 3 --repeats 10 --threads 2 --out results/step_bench.json

Implementations (``--impls``): ``ours`` / ``ours-int4`` / ``ours-int8`` / ``ours-fp32`` load
the model with ``RuntimeConfig(weights=auto / int4 / int8 / float32)`` (``auto``: k-quant
blocks on our kernel; ``int4``: 4-bit blocks on torch's int4 kernel); ``hf`` is transformers
fp32; ``llamacpp`` is llama.cpp on the GGUF itself (`llamacpp_step`).
Each model is a zoo name; its folder in the spinserve cache is loaded by us
(`spinserve.loading.loader.load`) and, separately, by transformers
(`AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)`, reading the fp32 copy
made from the GGUF on first use: `with_fp32_weights`). Only one copy of one
model is in memory at a time. Every request starts with ``--context`` random prompt tokens
(``torch.manual_seed(0)``) already in the KV cache (prefilled once, untimed). The cases:

- ``decode_1x1``: one request appends 1 token at position ``context``; logits for 1 row.
- ``verify_1x8``: one request appends 8 tokens (the forward that verifies 7 draft tokens);
  logits for all 8 rows.
- ``batch_8x1``: 8 requests, each with its own context, append 1 token each; 1 logit row each.

Every timed step appends at position ``context`` again (ours overwrites the same KV slots;
transformers' DynamicCache is cropped back to ``context`` after each step, outside the timer).

What the numbers mean:

- ``median_ms`` / ``p90_ms``: wall time of one step over ``--repeats`` runs after ``--warmup``
  untimed ones. Ours includes building the step's input tensors from the `StepBatch`.
- ``tokens_per_s``: tokens fed through the model per second (1, 8, 8 tokens per step).
- ``gb_per_s``: weight bytes / median step time. Weight bytes are the parameters each step
  must read: all parameters, with the lm_head matrix counted and the embedding table not
  (a lookup reads a few rows), a tied embedding counted once as the lm_head.
- ``x_floor``: median step time / (weight bytes / measured read bandwidth): how many times
  slower than streaming the weights once from memory. 1.0 is the decode roofline.
- ``ratio_to_decode``: this case's median over the same implementation's ``decode_1x1``.
- ``max_abs_logit_diff``: on transformers' rows, the largest difference from our logits for
  the same step (a check that both sides do the same work).
- ``others_busy``: the share of the machine's CPU (all cores, steal included) that other
  processes used while the case ran. The machine is shared, and when another process holds a
  core, 2-thread OpenMP kernels stall on each other: an 8-row matmul goes from 0.2 ms to
  15 ms and a step reads 10-30x slow. So each case first waits (up to ``--quiet-timeout`` s)
  for others to use at most ``--max-busy`` of the CPU, and is timed again (``--retries``)
  when they took more meanwhile; ``attempts`` counts the timings. Distrust any row whose
  ``others_busy`` is above ``--max-busy``.
- Bandwidth: ``copy_gb_per_s`` is (read + write bytes) / time of ``dst.copy_(src)`` on a
  1 GiB fp32 tensor; ``read_gb_per_s`` is bytes / time of ``src.sum()``; median of 5 after
  3 warm-up passes (``read_gb_per_s_best``: the fastest pass). The floor uses the median.

With ``--profile-steps N`` (default 3) the script also profiles N decode steps of each
implementation and writes the top ops by self CPU time to the JSON and to
``<out stem>_profile_<model>_<impl>.txt``. The table goes to stdout and to ``<out stem>.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import llamacpp_step
import numpy as np
import torch
import transformers
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM

from spinserve.config.engine import RuntimeConfig
from spinserve.loading import loader, zoo
from spinserve.loading.convert import with_fp32_weights
from spinserve.runtime.runner import ModelRunner
from spinserve.types.batch import SeqChunk, StepBatch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct")
NUM_REQUESTS = 8  # batch size of batch_8x1, and the number of prompts prepared
VERIFY_TOKENS = 8  # tokens of verify_1x8: 7 draft tokens + the bonus position
BLOCK_SIZE = 16
CASES = ("decode_1x1", "verify_1x8", "batch_8x1")
# Our weight forms (RuntimeConfig.weights), transformers fp32, llama.cpp on the GGUF.
OURS_WEIGHTS = {
    "ours": "auto",
    "ours-int4": "int4",
    "ours-int8": "int8",
    "ours-fp32": "float32",
}
IMPLS = (*OURS_WEIGHTS, "hf", "llamacpp")
CASE_TOKENS = {"decode_1x1": 1, "verify_1x8": VERIFY_TOKENS, "batch_8x1": NUM_REQUESTS}
PROFILE_ROWS = 15
GIB = 1 << 30


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- timing and machine facts


def time_calls(
    step: Callable[[], object], warmup: int, repeats: int, reset: Callable[[], None] | None = None
) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``step`` after ``warmup`` untimed ones.

    ``reset`` runs after every call, outside the timer.
    """
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
        if reset is not None:
            reset()
        if i >= warmup:
            times.append(elapsed * 1e3)
    return times


def measure_bandwidth(args: argparse.Namespace, warmup: int = 3, repeats: int = 5) -> dict:
    """Copy (read + write) and pure-read bandwidth of a 1 GiB fp32 tensor, in GB/s.

    Several warm-up passes: the first passes over fresh memory read 20-30% slow here. Retried
    like a case when other processes took more than ``--max-busy`` of the CPU meanwhile.
    """
    src = torch.empty(GIB // 4, dtype=torch.float32).fill_(1.0)  # fill: fault the pages in
    dst = torch.empty_like(src).fill_(0.0)
    for attempt in range(1, args.retries + 2):
        wait_for_quiet(args.max_busy, args.quiet_timeout)
        before = cpu_sample()
        copy_ms = time_calls(lambda: dst.copy_(src), warmup, repeats)
        read_ms = time_calls(src.sum, warmup, repeats)
        busy = others_share(before, cpu_sample())
        if busy <= args.max_busy:
            break
        log(f"other processes took {busy:.0%} of the CPU during timing (attempt {attempt})")
    return {
        "tensor_bytes": GIB,
        "repeats": repeats,
        "copy_ms": float(np.median(copy_ms)),
        "copy_gb_per_s": 2 * GIB / (np.median(copy_ms) * 1e-3) / 1e9,
        "read_ms": float(np.median(read_ms)),
        "read_gb_per_s": GIB / (np.median(read_ms) * 1e-3) / 1e9,
        "read_gb_per_s_best": GIB / (min(read_ms) * 1e-3) / 1e9,
        "others_busy": busy,
        "attempts": attempt,
    }


def machine_info(threads: int) -> dict:
    cpu_model, family, flags = "unknown", "", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu_model == "unknown":
                cpu_model = value.strip()
            elif key.strip() == "cpu family" and not family:
                family = value.strip()  # AMD: 25 Zen 3/4, 26 Zen 5
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {
        "cpu_model": cpu_model,
        "cpu_family": family,
        "cpu_flags": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"}),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def cpu_sample() -> tuple[float, float, float]:
    """(busy, capacity) CPU seconds of the whole machine from /proc/stat, and this process's
    CPU seconds; steal time counts as busy (the hypervisor gave the core to someone else)."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    hz = os.sysconf("SC_CLK_TCK")
    own = os.times()
    busy = user + nice + system + irq + softirq + steal
    return busy / hz, (busy + idle + iowait) / hz, own.user + own.system


def others_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Share of the machine's CPU that other processes used between two `cpu_sample` calls."""
    busy, capacity, own = (b - a for a, b in zip(before, after, strict=True))
    return max(0.0, busy - own) / max(capacity, 1e-9)


def wait_for_quiet(max_busy: float, timeout_s: float) -> None:
    """Wait (up to ``timeout_s``) until other processes use at most ``max_busy`` of the CPU.

    The machine is shared; when another process holds a core, 2-thread OpenMP kernels stall
    on each other (a matmul of 8 rows goes from 0.2 ms to 15 ms), so timings are worthless.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        before = cpu_sample()
        time.sleep(2.0)
        busy = others_share(before, cpu_sample())
        if busy <= max_busy or time.monotonic() > deadline:
            return
        log(f"other processes use {busy:.0%} of the CPU; waiting for a quiet machine")
        time.sleep(3.0)


@dataclass
class Timing:
    times_ms: list[float]
    others_busy: float  # share of the CPU other processes used while this case ran
    attempts: int


def timed_case(
    step: Callable[[], object], args: argparse.Namespace, reset: Callable[[], None] | None = None
) -> Timing:
    """`time_calls` on a quiet machine: wait for quiet, time, and retry (up to ``--retries``
    times) when other processes took more than ``--max-busy`` of the CPU meanwhile."""
    for attempt in range(1, args.retries + 2):
        wait_for_quiet(args.max_busy, args.quiet_timeout)
        before = cpu_sample()
        times = time_calls(step, args.warmup, args.repeats, reset)
        busy = others_share(before, cpu_sample())
        if busy <= args.max_busy:
            break
        log(f"other processes took {busy:.0%} of the CPU during timing (attempt {attempt})")
    return Timing(times, busy, attempt)


def weight_bytes(model: torch.nn.Module, embed: torch.Tensor, lm_head: torch.Tensor) -> int:
    """Bytes one step reads: every parameter once, minus the embedding table unless it is
    also the lm_head (tied)."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[p.data_ptr()] = p.numel() * p.element_size()
    total = sum(seen.values())
    if embed.data_ptr() != lm_head.data_ptr():
        total -= embed.numel() * embed.element_size()
    return total


def wait_for_model(name: str, cache: Path, timeout_s: float) -> Path:
    """The converted folder of ``name``, once its completion marker exists."""
    marker = zoo.model_dir(name, cache) / zoo.MARKER_FILE
    deadline = time.monotonic() + timeout_s
    if not marker.is_file():
        log(f"{name}: waiting for {marker}")
    while not marker.is_file():
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: {marker} did not appear within {timeout_s:.0f} s")
        time.sleep(5)
    return marker.parent


# ---------------------------------------------------------------- the workload


@dataclass(frozen=True)
class Workload:
    context: int
    prompts: torch.Tensor  # [NUM_REQUESTS, context] int64
    new_ids: torch.Tensor  # [NUM_REQUESTS, VERIFY_TOKENS] int64: tokens the timed steps append

    @classmethod
    def make(cls, vocab_size: int, context: int) -> Workload:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab_size, (NUM_REQUESTS, context + VERIFY_TOKENS), generator=gen)
        return cls(context, ids[:, :context].contiguous(), ids[:, context:].contiguous())


@dataclass
class CaseResult:
    timing: Timing
    logits: torch.Tensor  # [rows, vocab] of the last timed run, to compare across implementations


# ---------------------------------------------------------------- ours


def run_ours(
    name: str, work: Workload, args: argparse.Namespace, weights: str
) -> tuple[dict[str, CaseResult], int, dict]:
    runtime = RuntimeConfig(weights=weights)
    loaded = loader.load(name, runtime, cache_dir=args.cache_dir, fetch_missing=False)
    model = loaded.model
    log(f"{name}/ours-{weights}: loaded in {loaded.load_seconds:.1f} s")
    wbytes = model.weight_bytes()
    per_req = math.ceil((work.context + VERIFY_TOKENS) / BLOCK_SIZE)
    runner = ModelRunner(
        model, NUM_REQUESTS * per_req, BLOCK_SIZE, kv_dtype=getattr(torch, args.kv_cache_dtype)
    )

    def chunk(req: int, ids: torch.Tensor, start: int, num_logits: int) -> SeqChunk:
        blocks = list(range(req * per_req, (req + 1) * per_req))
        return SeqChunk(f"r{req}", ids.tolist(), start, blocks, num_logits)

    start = time.perf_counter()
    runner.execute(StepBatch([chunk(r, work.prompts[r], 0, 1) for r in range(NUM_REQUESTS)]))
    elapsed = time.perf_counter() - start
    log(f"{name}/ours-{weights}: prefilled {NUM_REQUESTS}x{work.context} in {elapsed:.1f} s")
    c = work.context
    batches = {
        "decode_1x1": StepBatch([chunk(0, work.new_ids[0, :1], c, 1)]),
        "verify_1x8": StepBatch([chunk(0, work.new_ids[0], c, VERIFY_TOKENS)]),
        "batch_8x1": StepBatch([chunk(r, work.new_ids[r, :1], c, 1) for r in range(NUM_REQUESTS)]),
    }
    results = {}
    for case, batch in batches.items():
        out: list[torch.Tensor] = []
        timing = timed_case(lambda b=batch, o=out: o.append(runner.execute(b)), args)
        results[case] = CaseResult(timing, out[-1])
        log(f"{name}/ours-{weights}/{case}: median {np.median(timing.times_ms):.1f} ms")
    prof = profile_steps(lambda: runner.execute(batches["decode_1x1"]), args)
    return results, wbytes, prof  # the model is freed when this frame goes: see bench_model


# ---------------------------------------------------------------- transformers


def run_hf(
    folder: Path, work: Workload, args: argparse.Namespace
) -> tuple[dict[str, CaseResult], int, dict, str]:
    folder = with_fp32_weights(folder, log)  # transformers reads the fp32 copy, made once
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    log(f"{folder.name}/hf: loaded in {time.perf_counter() - start:.1f} s")
    wbytes = weight_bytes(
        model, model.get_input_embeddings().weight, model.get_output_embeddings().weight
    )
    results = {}
    with torch.inference_mode():
        one = prefill_hf(model, work.prompts[:1])
        one_tok, eight_tok = work.new_ids[:1, :1], work.new_ids[:1]
        results["decode_1x1"] = time_hf(
            model, one, one_tok, work.context, args, lambda lg: lg[:, -1]
        )
        results["verify_1x8"] = time_hf(model, one, eight_tok, work.context, args, lambda lg: lg[0])
        prof = profile_steps(lambda: step_hf(model, one, one_tok, work.context), args)
        many = prefill_hf(model, work.prompts)
        results["batch_8x1"] = time_hf(
            model, many, work.new_ids[:, :1], work.context, args, lambda lg: lg[:, -1]
        )
    for case, r in results.items():
        log(f"{folder.name}/hf/{case}: median {np.median(r.timing.times_ms):.1f} ms")
    attn_impl = str(getattr(model.config, "_attn_implementation", "unknown"))
    return results, wbytes, prof, attn_impl


def prefill_hf(model: torch.nn.Module, prompts: torch.Tensor) -> object:
    """A DynamicCache holding ``prompts`` [batch, context] (equal lengths: no padding)."""
    start = time.perf_counter()
    cache = model(input_ids=prompts, use_cache=True, logits_to_keep=1).cache
    log(f"hf: prefilled {tuple(prompts.shape)} in {time.perf_counter() - start:.1f} s")
    return cache


def step_hf(model: torch.nn.Module, cache: object, ids: torch.Tensor, context: int) -> torch.Tensor:
    """One timed-shape forward, then the cache cropped back to ``context`` tokens."""
    logits = model(input_ids=ids, cache=cache, use_cache=True).logits
    roll_back(cache, context)
    return logits


def roll_back(cache: object, context: int) -> None:
    # transformers 5 takes the number of tokens to drop as a negative count.
    cache.crop(context - cache.get_seq_length())


def time_hf(
    model: torch.nn.Module,
    cache: object,
    ids: torch.Tensor,  # [batch, new_tokens]
    context: int,
    args: argparse.Namespace,
    rows: Callable[[torch.Tensor], torch.Tensor],  # [batch, new, vocab] -> [rows, vocab]
) -> CaseResult:
    if cache.get_seq_length() != context:
        raise RuntimeError(f"cache holds {cache.get_seq_length()} tokens, expected {context}")
    out: list[torch.Tensor] = []

    def step() -> None:
        out.append(model(input_ids=ids, cache=cache, use_cache=True).logits)

    timing = timed_case(step, args, reset=lambda: roll_back(cache, context))
    return CaseResult(timing, rows(out[-1]).float())


# ---------------------------------------------------------------- llama.cpp


def run_llamacpp(
    name: str, work: Workload, args: argparse.Namespace
) -> tuple[dict[str, CaseResult], int]:
    gguf = zoo.gguf_path(name, args.cache_dir)
    step = llamacpp_step.LlamaCppStep(gguf, args.threads, NUM_REQUESTS, work.context + 64)
    try:
        start = time.perf_counter()
        step.prefill(work.prompts.tolist())
        log(
            f"{name}/llamacpp: prefilled {NUM_REQUESTS}x{work.context} in "
            f"{time.perf_counter() - start:.1f} s"
        )
        c = work.context
        cases = {
            "decode_1x1": ([work.new_ids[0, :1].tolist()], 1),
            "verify_1x8": ([work.new_ids[0].tolist()], 1),
            "batch_8x1": (
                [work.new_ids[r, :1].tolist() for r in range(NUM_REQUESTS)],
                NUM_REQUESTS,
            ),
        }
        results = {}
        for case, (new_ids, seqs) in cases.items():
            run = step.case(new_ids, c)
            out: list[np.ndarray] = []
            timing = timed_case(
                lambda r=run, o=out: o.append(r()), args, reset=lambda n=seqs: step.roll_back(n, c)
            )
            results[case] = CaseResult(timing, torch.from_numpy(out[-1]))
            log(f"{name}/llamacpp/{case}: median {np.median(timing.times_ms):.1f} ms")
    finally:
        step.close()
    return results, llamacpp_step.gguf_weight_bytes(gguf)


# ---------------------------------------------------------------- profile and report


def profile_steps(step: Callable[[], object], args: argparse.Namespace) -> dict:
    """Top ops by self CPU time over ``--profile-steps`` calls, per step ({} when off)."""
    num_steps = args.profile_steps
    if num_steps <= 0:
        return {}
    wait_for_quiet(args.max_busy, args.quiet_timeout)
    step()
    before = cpu_sample()
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(num_steps):
            step()
    busy = others_share(before, cpu_sample())
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = [
        {
            "op": e.key,
            "self_ms_per_step": e.self_cpu_time_total / 1e3 / num_steps,
            "calls_per_step": e.count / num_steps,
            "self_share": e.self_cpu_time_total / total,
        }
        for e in events[:PROFILE_ROWS]
    ]
    return {"steps": num_steps, "others_busy": busy, "top_ops": top}


def summarize(case: str, t: Timing, wbytes: int, read_bw: float, decode_ms: float) -> dict:
    median = float(np.median(t.times_ms))
    floor_ms = wbytes / (read_bw * 1e9) * 1e3
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(t.times_ms, 90)),
        "times_ms": t.times_ms,
        "tokens": CASE_TOKENS[case],
        "tokens_per_s": CASE_TOKENS[case] / (median * 1e-3),
        "gb_per_s": wbytes / (median * 1e-3) / 1e9,
        "x_floor": median / floor_ms,
        "ratio_to_decode": median / decode_ms,
        "others_busy": t.others_busy,
        "attempts": t.attempts,
    }


def summarize_impl(results: dict[str, CaseResult], wbytes: int, read_bw: float) -> dict:
    decode_ms = float(np.median(results["decode_1x1"].timing.times_ms))
    return {
        case: summarize(case, results[case].timing, wbytes, read_bw, decode_ms) for case in CASES
    }


def markdown_table(report: dict) -> str:
    head = (
        "| model | impl | case | median ms | p90 ms | tok/s | GB/s | x floor | / decode_1x1 "
        "| / hf | others busy |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for name, m in report["models"].items():
        for impl in (i for i in IMPLS if i in m):
            for case in CASES:
                s = m[impl]["cases"][case]
                vs = s["median_ms"] / m["hf"]["cases"][case]["median_ms"] if "hf" in m else None
                lines.append(
                    f"| {name} | {impl} | {case} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} "
                    f"| {s['tokens_per_s']:.1f} | {s['gb_per_s']:.2f} | {s['x_floor']:.2f} "
                    f"| {s['ratio_to_decode']:.2f} | {'' if vs is None else f'{vs:.2f}'} "
                    f"| {s['others_busy']:.0%} |"
                )
    return "\n".join(lines)


def bench_model(name: str, args: argparse.Namespace, read_bw: float) -> dict:
    folder = wait_for_model(name, args.cache_dir, args.wait_timeout)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    work = Workload.make(vocab, args.context)
    runs: dict[str, tuple[dict[str, CaseResult], int]] = {}
    profiles: dict[str, dict] = {}
    out: dict = {"folder": str(folder), "vocab_size": vocab}
    # One model copy in memory at a time: each run's model is freed before the next loads.
    for impl in args.impls:
        if impl in OURS_WEIGHTS:
            results, wbytes, prof = run_ours(name, work, args, OURS_WEIGHTS[impl])
            runs[impl], profiles[impl] = (results, wbytes), prof
        elif impl == "hf":
            results, wbytes, prof, attn_impl = run_hf(folder, work, args)
            runs[impl], profiles[impl] = (results, wbytes), prof
            out["hf_attn_implementation"] = attn_impl
        else:
            runs[impl] = run_llamacpp(name, work, args)
        gc.collect()
    for impl, (results, wbytes) in runs.items():
        cases = summarize_impl(results, wbytes, read_bw)
        if "hf" in runs and impl != "hf":
            for case in CASES:
                ref = runs["hf"][0][case].logits
                cases[case]["max_abs_logit_diff_vs_hf"] = (
                    (ref - results[case].logits.float()).abs().max().item()
                )
                cases[case]["argmax_agree_vs_hf"] = (
                    (ref.argmax(-1) == results[case].logits.argmax(-1)).float().mean().item()
                )
        out[impl] = {"weight_bytes": wbytes, "cases": cases}
        if profiles.get(impl):
            out[impl]["profile_decode_1x1"] = profiles[impl]
    write_profiles(args.out, name, profiles)
    return out


def write_profiles(out: Path, name: str, profiles: dict[str, dict]) -> None:
    for impl, prof in profiles.items():
        if not prof:
            continue
        lines = [
            f"# {name} / {impl}: decode_1x1, {prof['steps']} steps, "
            f"other processes used {prof['others_busy']:.0%} of the CPU meanwhile",
            f"{'op':<48} {'self ms/step':>12} {'calls/step':>10} {'share':>6}",
        ]
        lines += [
            f"{r['op']:<48} {r['self_ms_per_step']:>12.2f} {r['calls_per_step']:>10.0f} "
            f"{r['self_share']:>6.1%}"
            for r in prof["top_ops"]
        ]
        path = out.with_name(f"{out.stem}_profile_{name}_{impl}.txt")
        path.write_text("\n".join(lines) + "\n")


def add_quiet_flags(
    p: argparse.ArgumentParser, quiet_timeout: float, retries: int, what: str
) -> None:
    """``--max-busy``, ``--quiet-timeout``, ``--retries``: how a benchmark waits for a quiet
    machine and re-times a ``what`` that other processes disturbed."""
    p.add_argument(
        "--max-busy", type=float, default=0.1, help="most CPU share others may use while timing"
    )
    p.add_argument(
        "--quiet-timeout",
        type=float,
        default=quiet_timeout,
        help="seconds to wait for quiet per try",
    )
    p.add_argument("--retries", type=int, default=retries, help=f"re-timings of a disturbed {what}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument(
        "--impls",
        nargs="+",
        choices=IMPLS,
        default=list(IMPLS),
        help="implementations (llamacpp is skipped when llama-cpp-python is not installed)",
    )
    p.add_argument("--context", type=int, default=128, help="prompt tokens in the KV cache")
    p.add_argument(
        "--kv-cache-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="our KV cache's dtype (llama.cpp keeps its own in float16)",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per case")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per case")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--profile-steps", type=int, default=3, help="decode steps to profile (0: off)")
    add_quiet_flags(p, quiet_timeout=300.0, retries=3, what="case")
    p.add_argument("--cache-dir", type=Path, default=None, help="spinserve cache (default: zoo's)")
    p.add_argument("--wait-timeout", type=float, default=1800.0, help="seconds to wait per model")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "step_bench.json")
    args = p.parse_args(argv)
    if min(args.context, args.repeats, args.threads) < 1 or min(args.warmup, args.retries) < 0:
        p.error("--context, --repeats and --threads must be >= 1, --warmup and --retries >= 0")
    args.cache_dir = zoo.resolve_cache_dir(str(args.cache_dir) if args.cache_dir else None)
    if "llamacpp" in args.impls and not llamacpp_step.available():
        log("llama-cpp-python is not installed: skipping llamacpp")
        args.impls.remove("llamacpp")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(args.threads), "settings": {}, "models": {}}
    report["settings"] = {k: v for k, v in vars(args).items() if k not in ("cache_dir", "out")} | {
        "block_size": BLOCK_SIZE,
        "cache_dir": str(args.cache_dir),
    }
    log("measuring memory bandwidth (1 GiB fp32)")
    report["bandwidth"] = measure_bandwidth(args)
    bw = report["bandwidth"]
    log(f"copy {bw['copy_gb_per_s']:.2f} GB/s (read+write), read {bw['read_gb_per_s']:.2f} GB/s")
    for name in args.models:
        report["models"][name] = bench_model(name, args, bw["read_gb_per_s"])
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive
    log(f"wrote {args.out}")
    summary = (
        f"Memory bandwidth: copy {bw['copy_gb_per_s']:.2f} GB/s (read+write), "
        f"read {bw['read_gb_per_s']:.2f} GB/s; threads {args.threads}, context {args.context}, "
        f"our KV cache {args.kv_cache_dtype}\n\n" + markdown_table(report)
    )
    args.out.with_suffix(".md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()

"""Speculative decoding benchmark: which drafter wins which prompt category, against the target
alone and against transformers' assisted generation, side by side in one run.

Reproduce (from the repository root, ~30-45 minutes on the 2-core dev machine)::

    .venv/bin/python benchmarks/spec_bench.py \\
        --drafters qwen2.5-coder-0.5b-instruct smollm2-135m-instruct ngram suffix \\
        --max-tokens 128 --num-draft-tokens 4 --per-category 1 --threads 2 \\
        --out results/spec_bench.json

Target ``--target`` (default qwen2.5-coder-1.5b-instruct; our models' linear weights in
``--weights`` form: ``auto``, the default, is the int4 CPU path, ``float32`` the fp32 reference
that transformers also runs), batch 1, greedy. Prompts:
``--per-category`` prompts of each category of `spec_prompts` (Spec-Bench dev: translation,
summarization, qa, math_reasoning, rag, mt_bench; and humaneval), a seeded sample that is the
same for every configuration. Every prompt goes through the target's chat template; the token
ids are built once and given to every configuration, ours and transformers'.

Configurations, in this order, each timed over the whole sample before the next starts:

- ``ours/target``: our engine, ``SpecParams(drafter="none")``;
- ``ours/<drafter>``: one engine per drafter (``SpeculativeConfig(drafters=(name,))``, k =
  ``--num-draft-tokens``), all on the same loaded target; each drafter is freed before the next;
- ``hf/plain``: ``AutoModelForCausalLM.from_pretrained(<target's cache folder>)``,
  ``generate(do_sample=False)``, loaded after ours is freed;
- ``hf/<assistant>`` per ``--hf-assistants``: assisted generation with ``assistant_model``; an
  assistant whose vocabulary differs from the target's also gets ``tokenizer`` and
  ``assistant_tokenizer`` (universal assisted decoding). transformers' own assistant settings
  are kept (recorded in the JSON under ``settings.hf_assistants``).

Stopping: every configuration stops at EOS (the target's EOS ids, passed to transformers
explicitly) or after ``--max-tokens`` new tokens, so the token counts of a prompt agree across
configurations whenever the outputs do. Each configuration first runs one untimed warm-up of
``--warmup-tokens`` tokens on a prompt outside the sample; model loading is never timed.

Per prompt: new tokens, wall seconds (add_request to the finishing step; for transformers the
``generate`` call), tokens/s, TTFT, emission events (for ITL), our ``SpecStats``, and whether
the output token ids equal ``ours/target``'s for the prompt (greedy speculation is lossless:
any difference is a bug, and the tables say so loudly). Tables: see `spec_report`.

The machine is shared: before each prompt the script waits (up to ``--quiet-timeout`` s) for
other processes to use at most ``--max-busy`` of the CPU, and times a prompt again (up to
``--retries`` times) when they took more meanwhile; a stateful drafter (suffix) is restored to
its state before the first try, so a retry never sees its own earlier output. At the end of
each configuration, prompts still disturbed are timed again after a longer wait
(``--redo-quiet-timeout``; suffix is rebuilt and fed the warm-up and the earlier prompts'
sequences, the state it had the first time), and the less disturbed timing is kept.
``others_busy`` above ``--max-busy`` marks a timing to distrust.

Time budget: after ``ours/target`` the script estimates the whole run as that stage's time
times the number of configurations. When that exceeds ``--max-minutes`` it lowers
``--max-tokens`` to ``--shrink-tokens`` (``ours/target``'s timings are cut at that token: it
emits one token per step, so the cut is exact) and says so in the notes of the output.

On a shared machine ``--priority -10`` runs the process (and its session's autogroup) ahead of
others, so that their CPU bursts stall the 2-thread kernels less; the quiet-wait still applies.
``--render <json>`` only redraws the tables of a saved run.

Partial results are written to ``--out`` after every prompt; the markdown tables go to stdout
and to ``<out>.md`` at the end.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from spec_prompts import CATEGORIES, WARMUP_TEXT, Prompt, sample_prompts
from spec_report import OURS_TARGET, markdown, summarize
from step_bench import (
    add_quiet_flags,
    cpu_sample,
    log,
    machine_info,
    others_share,
    wait_for_model,
    wait_for_quiet,
)
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from spinserve.config.engine import WEIGHT_FORMS, CacheConfig, EngineConfig, RuntimeConfig
from spinserve.config.model import KV_CACHE_DTYPES
from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import NO_DRAFTER, SpecParams, SpeculativeConfig
from spinserve.engine.builder import build_engine
from spinserve.engine.engine import LLMEngine
from spinserve.loading import loader, zoo
from spinserve.loading.convert import with_fp32_weights
from spinserve.speculative.registry import MODEL_FREE, build_drafter

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TARGET = "qwen2.5-coder-1.5b-instruct"
DEFAULT_DRAFTERS = ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "ngram", "suffix")
DEFAULT_HF_ASSISTANTS = ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
SPEC_BENCH = REPO_ROOT / "spinserve" / "bench" / "data" / "spec_bench" / "question_dev.jsonl"
HF_PLAIN = "hf/plain"


def first_diff(a: list[int], b: list[int]) -> int | None:
    """First position where ``a`` and ``b`` differ (the shorter length if one is a prefix of
    the other); None when equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def result(output_ids: list[int], wall: float, events: list[list[float]], forwards: int) -> dict:
    n = len(output_ids)
    return {
        "num_new_tokens": n,
        "wall_s": wall,
        "tokens_per_s": n / wall if wall else 0.0,
        "ttft_s": events[0][0] if events else None,
        "events": events,  # [[seconds since start, tokens emitted], ...]
        "target_forwards": forwards,
        "output_ids": output_ids,
    }


# ---------------------------------------------------------------- timing


def time_ours(engine: LLMEngine, ids: list[int], params: SamplingParams, spec: SpecParams) -> dict:
    """One request alone in ``engine``, from add_request to the step that finishes it."""
    start = time.perf_counter()
    engine.add_request(ids, params, spec=spec)
    events: list[list[float]] = []
    steps, final = 0, None
    while final is None:
        outputs = engine.step()
        steps += 1
        now = time.perf_counter() - start
        for out in outputs:
            if out.new_token_ids:
                events.append([now, len(out.new_token_ids)])
            if out.finished:
                final = out
        if steps > len(ids) + params.max_tokens + 16:
            raise RuntimeError(f"no finish after {steps} steps")
    rec = result(list(final.token_ids), time.perf_counter() - start, events, steps)
    rec["finish_reason"] = final.finish_reason
    stats = final.spec_stats
    rec["spec_stats"] = stats.to_dict() if stats and final.drafter is not None else None
    if rec["spec_stats"] is not None:  # raw counts: exact per-position rates over prompts
        rec["spec_stats"]["drafted_per_position"] = list(stats.drafted_per_position)
        rec["spec_stats"]["accepted_per_position"] = list(stats.accepted_per_position)
    return rec


class EventStreamer(BaseStreamer):
    """Times transformers' ``generate`` emissions: one `put` per target forward."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.events: list[list[float]] = []
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:  # generate puts the prompt first
            self._seen_prompt = True
            return
        self.events.append([time.perf_counter() - self.start, int(value.numel())])

    def end(self) -> None:
        pass


def time_hf(
    model: torch.nn.Module, ids: list[int], max_new: int, eos: list[int], extra: dict
) -> dict:
    input_ids = torch.tensor([ids])  # [1, prompt_len]
    start = time.perf_counter()
    streamer = EventStreamer(start)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos[0],
            streamer=streamer,
            **extra,
        )
    wall = time.perf_counter() - start
    new_ids = out[0, len(ids) :].tolist()
    rec = result(new_ids, wall, streamer.events, len(streamer.events))
    rec["finish_reason"] = "stop" if new_ids and new_ids[-1] in eos else "length"
    rec["spec_stats"] = None
    return rec


def measured(
    run_once: Callable[[], dict], args: argparse.Namespace, reset: Callable[[], None] | None
) -> dict:
    """``run_once`` on a quiet machine, timed again (after ``reset``) when disturbed."""
    for attempt in range(1, args.retries + 2):
        if attempt > 1 and reset is not None:
            reset()
        wait_for_quiet(args.max_busy, args.quiet_timeout)
        before = cpu_sample()
        rec = run_once()
        busy = others_share(before, cpu_sample())
        if busy <= args.max_busy:
            break
        log(f"other processes took {busy:.0%} of the CPU during timing (attempt {attempt})")
    return rec | {"others_busy": busy, "attempts": attempt}


# ---------------------------------------------------------------- the run


class Bench:
    """The sample, the settings and every result so far; saved after each prompt."""

    def __init__(self, args: argparse.Namespace, prompts: list[Prompt]) -> None:
        self.args = args
        self.prompts = prompts
        self.prompt_ids: list[list[int]] = []
        self.warm_ids: list[int] = []
        self.eos: list[int] = []
        self.weight_bytes: int | None = None
        self.start = time.monotonic()
        self.stage_seconds: list[float] = []
        self.report: dict = {
            "machine": machine_info(args.threads),
            "settings": settings(args),
            "sample": [{"category": p.category, "prompt_id": p.prompt_id} for p in prompts],
            "notes": [],
            "results": [],
        }

    def reference(self, index: int, config: str) -> list[int] | None:
        for r in self.report["results"]:
            if r["prompt_index"] == index and r["config"] == config:
                return r["output_ids"]
        return None

    def record(self, config: str, index: int, rec: dict) -> None:
        prompt = self.prompts[index]
        ref = self.reference(index, OURS_TARGET)
        hf_ref = self.reference(index, HF_PLAIN) if config.startswith("hf/") else None
        rec = {
            "config": config,
            "category": prompt.category,
            "category_index": CATEGORIES.index(prompt.category),
            "prompt_id": prompt.prompt_id,
            "prompt_index": index,
            "num_prompt_tokens": len(self.prompt_ids[index]),
        } | rec
        rec["first_diff"] = None if ref is None else first_diff(rec["output_ids"], ref)
        rec["same_as_target"] = ref is not None and rec["first_diff"] is None
        if config == OURS_TARGET:
            rec["same_as_target"] = True
        if hf_ref is not None and config != HF_PLAIN:
            rec["same_as_hf_plain"] = rec["output_ids"] == hf_ref
        self.report["results"].append(rec)
        self.save()
        mal = rec["spec_stats"]["mean_accepted_length"] if rec["spec_stats"] else None
        same = (
            "same" if rec["same_as_target"] else f"DIFFERS from {OURS_TARGET} @{rec['first_diff']}"
        )
        log(
            f"{config} {prompt.category}:{prompt.prompt_id}: {rec['num_new_tokens']} tokens in "
            f"{rec['wall_s']:.1f} s = {rec['tokens_per_s']:.2f} tok/s"
            + (f", mal {mal:.2f}" if mal is not None else "")
            + f", {same}, others {rec['others_busy']:.0%}"
        )
        if config.startswith("ours/") and not rec["same_as_target"]:
            log(f"!!! LOSSLESSNESS VIOLATION: {config} on {prompt.category}:{prompt.prompt_id}")

    def disturbed(self, config: str) -> list[int]:
        """Prompt indices of ``config`` whose timing others disturbed beyond --max-busy."""
        return [
            r["prompt_index"]
            for r in self.report["results"]
            if r["config"] == config and r["others_busy"] > self.args.max_busy
        ]

    def replace(self, config: str, index: int, rec: dict) -> None:
        """Keep the less disturbed of the recorded timing and ``rec``."""
        results = self.report["results"]
        old = next(r for r in results if r["config"] == config and r["prompt_index"] == index)
        if rec["others_busy"] >= old["others_busy"]:
            log(f"{config} #{index}: redo as disturbed ({rec['others_busy']:.0%}); kept the first")
            return
        results.remove(old)
        self.record(config, index, rec | {"redone_from_others_busy": old["others_busy"]})

    def save(self) -> None:
        self.report["summary"] = summarize(self.report["results"], self.weight_bytes)
        self.report["run_minutes"] = (time.monotonic() - self.start) / 60
        self.args.out.write_text(json.dumps(self.report, indent=1) + "\n")

    def note(self, text: str) -> None:
        log(text)
        self.report["notes"].append(text)


def settings(args: argparse.Namespace) -> dict:
    keep = {k: v for k, v in vars(args).items() if k not in ("out", "spec_bench", "data_cache")}
    return keep | {
        "cache_dir": str(args.cache_dir),
        "spec_bench": str(args.spec_bench),
        "stop_policy": "stop at EOS or after max_tokens new tokens, every configuration",
        "hf_assistants": {},
    }


def run_ours_config(bench: Bench, target: loader.LoadedModel, name: str | None) -> None:
    """Time the sample on one engine: the target alone (name None) or with drafter ``name``."""
    args = bench.args
    config = OURS_TARGET if name is None else f"ours/{name}"
    stage_start = time.monotonic()
    spec_config = SpeculativeConfig(
        drafters=() if name is None else (name,),
        num_draft_tokens=args.num_draft_tokens,
        drafter_kv_cache_dtype=args.drafter_kv_cache_dtype,
    )
    drafters = {}
    if name is not None:
        start = time.perf_counter()
        drafters[name] = build_drafter(name, target, spec_config, runtime(args))
        log(f"{config}: drafter ready in {time.perf_counter() - start:.1f} s")
    engine_config = EngineConfig(
        cache=CacheConfig(kv_cache_gib=args.kv_cache_gib),
        runtime=runtime(args),
        speculative=spec_config,
    )
    engine = build_engine(target, engine_config, drafters=drafters)  # engine.drafters is drafters
    time_ours_sample(bench, engine, config, drafters, name)
    del engine, drafters
    gc.collect()
    bench.stage_seconds.append(time.monotonic() - stage_start)


def time_ours_sample(
    bench: Bench, engine: LLMEngine, config: str, drafters: dict, name: str | None
) -> None:
    args = bench.args
    spec = SpecParams(drafter=NO_DRAFTER if name is None else name)
    engine.generate([bench.warm_ids], SamplingParams(max_tokens=args.warmup_tokens), spec)
    params = SamplingParams(max_tokens=args.max_tokens)
    for index, ids in enumerate(bench.prompt_ids):
        reset = restorer(drafters, name)
        rec = measured(lambda ids=ids: time_ours(engine, ids, params, spec), args, reset)
        bench.record(config, index, rec)
    for index in bench.disturbed(config):
        ids = bench.prompt_ids[index]
        prepare = None
        if name in MODEL_FREE:

            def prepare(index: int = index) -> None:
                replay(bench, engine, drafters, name, spec, index)

            prepare()
        rec = measured(lambda ids=ids: time_ours(engine, ids, params, spec), redo(args), prepare)
        bench.replace(config, index, rec)


def replay(
    bench: Bench, engine: LLMEngine, drafters: dict, name: str, spec: SpecParams, index: int
) -> None:
    """Put a fresh model-free drafter in the state it had before prompt ``index``: the
    warm-up, then every earlier prompt's sequence as it finished (suffix learns from them)."""
    drafters[name] = MODEL_FREE[name]()
    engine.generate([bench.warm_ids], SamplingParams(max_tokens=bench.args.warmup_tokens), spec)
    config = f"ours/{name}"
    for j in range(index):
        output_ids = bench.reference(j, config)
        drafters[name].finish(f"replay-{j}", bench.prompt_ids[j] + (output_ids or []))


def redo(args: argparse.Namespace) -> argparse.Namespace:
    """Settings of the second pass over disturbed prompts: a longer wait for quiet."""
    return argparse.Namespace(
        **vars(args) | {"quiet_timeout": args.redo_quiet_timeout, "retries": args.redo_retries}
    )


def restorer(drafters: dict, name: str | None) -> Callable[[], None] | None:
    """For a drafter that learns across requests (suffix), a function that puts back its
    state of now; None for the others (model drafters drop a request's state on finish)."""
    if name not in MODEL_FREE:
        return None
    snapshot = copy.deepcopy(drafters[name])

    def reset() -> None:
        drafters[name] = copy.deepcopy(snapshot)

    return reset


def runtime(args: argparse.Namespace) -> RuntimeConfig:
    return RuntimeConfig(dtype="float32", weights=args.weights, num_threads=args.threads)


def check_budget(bench: Bench, num_configs: int) -> None:
    """Estimate the run from ``ours/target``'s stage; lower --max-tokens if it is too long."""
    args = bench.args
    stage = bench.stage_seconds[0]
    elapsed = time.monotonic() - bench.start
    estimate = (elapsed + stage * (num_configs - 1)) / 60
    log(f"estimate: {estimate:.0f} min for the run ({OURS_TARGET} took {stage:.0f} s)")
    bench.report["estimate_minutes"] = estimate
    if estimate <= args.max_minutes or not 0 < args.shrink_tokens < args.max_tokens:
        return
    bench.note(
        f"estimated {estimate:.0f} min > --max-minutes {args.max_minutes:g}: max tokens "
        f"lowered from {args.max_tokens} to {args.shrink_tokens} ({OURS_TARGET} cut at that token)"
    )
    args.max_tokens = args.shrink_tokens
    bench.report["settings"]["max_tokens"] = args.shrink_tokens
    for rec in bench.report["results"]:
        truncate(rec, args.shrink_tokens)
    bench.save()


def truncate(rec: dict, n: int) -> None:
    """Cut a target-alone result (one token per event) at its ``n``-th new token."""
    extra = rec["num_new_tokens"] - n
    if extra <= 0:
        return
    rec["events"] = rec["events"][:n]
    rec["output_ids"] = rec["output_ids"][:n]
    rec["num_new_tokens"] = n
    rec["wall_s"] = rec["events"][-1][0]
    rec["tokens_per_s"] = n / rec["wall_s"]
    rec["target_forwards"] -= extra
    rec["finish_reason"] = "length"


def run_ours(bench: Bench) -> None:
    args = bench.args
    target = loader.load(args.target, runtime(args), args.cache_dir, fetch_missing=False)
    log(f"{args.target}: loaded in {target.load_seconds:.1f} s")
    model = target.model
    bench.weight_bytes = model.weight_bytes()
    bench.report["settings"]["target_weight_bytes"] = bench.weight_bytes
    bench.eos = list(target.tokenizer.eos_token_ids)
    chat = target.tokenizer.apply_chat_template
    bench.prompt_ids = [chat([{"role": "user", "content": p.text}]) for p in bench.prompts]
    bench.warm_ids = chat([{"role": "user", "content": WARMUP_TEXT}])
    num_configs = 1 + len(args.drafters) + (0 if args.no_hf else 1 + len(args.hf_assistants))
    run_ours_config(bench, target, None)
    check_budget(bench, num_configs)
    for name in args.drafters:
        run_ours_config(bench, target, name)
        log_progress(bench, num_configs)


def log_progress(bench: Bench, num_configs: int) -> None:
    done = len(bench.stage_seconds)
    mean = sum(bench.stage_seconds) / done
    elapsed = (time.monotonic() - bench.start) / 60
    log(
        f"{done}/{num_configs} configurations in {elapsed:.1f} min; "
        f"~{mean * (num_configs - done) / 60:.0f} min to go"
    )


def run_hf(bench: Bench) -> None:
    args = bench.args
    # transformers reads a model's fp32 copy, made from its GGUF the first time
    folder = with_fp32_weights(zoo.model_dir(args.target, args.cache_dir), log)
    num_configs = 1 + len(args.drafters) + 1 + len(args.hf_assistants)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    run_hf_config(bench, model, HF_PLAIN, {})
    log_progress(bench, num_configs)
    for name in args.hf_assistants:
        assistant_folder = with_fp32_weights(zoo.model_dir(name, args.cache_dir), log)
        assistant = AutoModelForCausalLM.from_pretrained(assistant_folder, dtype=torch.float32)
        assistant_tokenizer = AutoTokenizer.from_pretrained(assistant_folder)
        extra: dict = {"assistant_model": assistant.eval()}
        same_vocab = assistant_tokenizer.get_vocab() == tokenizer.get_vocab()
        if not same_vocab:
            extra |= {"tokenizer": tokenizer, "assistant_tokenizer": assistant_tokenizer}
        bench.report["settings"]["hf_assistants"][name] = {
            "kind": "same-tokenizer" if same_vocab else "universal assisted decoding"
        } | assistant_settings(assistant)
        run_hf_config(bench, model, f"hf/{name}", extra)
        del extra, assistant, assistant_tokenizer
        gc.collect()
        log_progress(bench, num_configs)


def assistant_settings(assistant: torch.nn.Module) -> dict:
    """The assistant's drafting settings as transformers resolves them (None: its default)."""
    config = assistant.generation_config
    defaults = config._get_default_generation_params()
    keys = ("num_assistant_tokens", "num_assistant_tokens_schedule")
    keys += ("assistant_confidence_threshold",)
    return {k: getattr(config, k) if getattr(config, k) is not None else defaults[k] for k in keys}


def run_hf_config(bench: Bench, model: torch.nn.Module, config: str, extra: dict) -> None:
    args = bench.args
    stage_start = time.monotonic()
    time_hf(model, bench.warm_ids, args.warmup_tokens, bench.eos, extra)
    for index, ids in enumerate(bench.prompt_ids):
        rec = measured(
            lambda ids=ids: time_hf(model, ids, args.max_tokens, bench.eos, extra), args, None
        )
        bench.record(config, index, rec)
    for index in bench.disturbed(config):
        ids = bench.prompt_ids[index]
        rec = measured(
            lambda ids=ids: time_hf(model, ids, args.max_tokens, bench.eos, extra), redo(args), None
        )
        bench.replace(config, index, rec)
    bench.stage_seconds.append(time.monotonic() - stage_start)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--drafters", nargs="*", default=list(DEFAULT_DRAFTERS))
    p.add_argument("--hf-assistants", nargs="*", default=list(DEFAULT_HF_ASSISTANTS))
    p.add_argument("--no-hf", action="store_true", help="skip transformers' configurations")
    p.add_argument("--max-tokens", type=int, default=128, help="most new tokens per prompt")
    p.add_argument("--num-draft-tokens", type=int, default=4, help="k of our drafters")
    p.add_argument(
        "--weights",
        default="auto",
        choices=WEIGHT_FORMS,
        help="our models' linear weights (RuntimeConfig.weights; float32 = the reference)",
    )
    p.add_argument("--per-category", type=int, default=1, help="prompts per category")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt sample")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--warmup-tokens", type=int, default=8, help="tokens of each warm-up")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="our target's KV pool")
    p.add_argument(
        "--drafter-kv-cache-dtype",
        choices=KV_CACHE_DTYPES,
        default=SpeculativeConfig.drafter_kv_cache_dtype,
        help="our model drafters' cached keys and values",
    )
    p.add_argument("--max-minutes", type=float, default=50.0, help="budget for the run")
    p.add_argument(
        "--shrink-tokens", type=int, default=64, help="max tokens if over budget (0: never)"
    )
    add_quiet_flags(p, quiet_timeout=60.0, retries=1, what="prompt")
    p.add_argument(
        "--redo-quiet-timeout",
        type=float,
        default=300.0,
        help="wait for quiet when re-timing disturbed prompts at the end of a configuration",
    )
    p.add_argument("--redo-retries", type=int, default=1, help="tries of that second pass - 1")
    p.add_argument(
        "--priority",
        type=int,
        default=None,
        help="nice value for this process, e.g. -10 on a shared machine (needs root)",
    )
    p.add_argument("--render", type=Path, default=None, help="only redo the tables of this JSON")
    p.add_argument("--spec-bench", type=Path, default=SPEC_BENCH)
    p.add_argument(
        "--data-cache", type=Path, default=Path.home() / ".cache" / "spinserve" / "datasets"
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="spinserve cache (default: zoo's)")
    p.add_argument("--wait-timeout", type=float, default=1800.0, help="seconds to wait per model")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "spec_bench.json")
    args = p.parse_args(argv)
    if min(args.max_tokens, args.per_category, args.threads, args.warmup_tokens) < 1:
        p.error("--max-tokens, --per-category, --threads and --warmup-tokens must be >= 1")
    if args.retries < 0 or not 0 <= args.num_draft_tokens <= 16:
        p.error("--retries must be >= 0 and --num-draft-tokens in [0, 16]")
    args.cache_dir = zoo.resolve_cache_dir(str(args.cache_dir) if args.cache_dir else None)
    return args


def raise_priority(nice: int) -> None:
    """Run this process at ``nice`` (negative: ahead of others; needs root). With autogroup
    scheduling a thread's nice only counts inside its session, so the session's autogroup
    gets it too. Threads made later (torch's pool) inherit it from the main thread."""
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():
        autogroup.write_text(f"{nice}\n")
    log(f"running at nice {nice} (autogroup too)")


def render(path: Path) -> None:
    """Tables of a finished or partial run again, from its JSON (no timing)."""
    report = json.loads(path.read_text())
    report["summary"] = summarize(report["results"], report["settings"].get("target_weight_bytes"))
    table = markdown(report)
    path.with_suffix(".md").write_text(table + "\n")
    print(table)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render is not None:
        render(args.render)
        return
    if args.priority is not None:
        raise_priority(args.priority)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    prompts = sample_prompts(args.spec_bench, args.data_cache, args.per_category, args.seed)
    log("sample: " + ", ".join(f"{p.category}:{p.prompt_id}" for p in prompts))
    models = {args.target, *args.hf_assistants} | {d for d in args.drafters if d not in MODEL_FREE}
    for name in sorted(models):
        wait_for_model(name, args.cache_dir, args.wait_timeout)
    bench = Bench(args, prompts)
    run_ours(bench)  # returns with our target freed: never two big models at once
    gc.collect()
    if not args.no_hf:
        run_hf(bench)
    bench.save()
    table = markdown(bench.report)
    md_path = args.out.with_suffix(".md")
    md_path.write_text(table + "\n")
    log(f"wrote {args.out} and {md_path} in {bench.report['run_minutes']:.1f} min")
    print(table)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Drafter-selection benchmark: the selection policies against the target alone, each single
drafter and the per-request oracle, on real models, at batch 1 and under concurrency.

Reproduce (from the repository root; meant to take ~35 minutes on the quiet 2-core dev
machine, an estimate not yet measured: the ETA printed after each timing tells)::

    .venv/bin/python benchmarks/selection_bench.py \\
        --per-category 2 --max-tokens 64 --num-draft-tokens 4 --concurrency 8 --threads 2 \\
        --out results/selection_bench.json

A smoke test in ~2 minutes (a small target, three short categories; 1 thread, because
2-thread kernels crawl while others use the CPU)::

    .venv/bin/python benchmarks/selection_bench.py --target smollm2-135m-instruct \\
        --drafters ngram suffix --per-category 1 --categories qa mt_bench humaneval \\
        --max-tokens 8 --quiet-timeout 2 --retries 0 --threads 1 --out results/smoke/sel.json

Target ``--target`` (default qwen2.5-coder-1.5b-instruct), loaded once with the default
`RuntimeConfig` (GGUF 4-bit blocks on torch's int4 kernel; ``--weights`` to change), and its
zoo drafter set (`zoo.default_drafters`: the 0.5B, SmolLM2 (cross-tokenizer), ngram, suffix;
``--drafters`` to change). Model drafters are loaded once and shared by every engine; the
model-free ones are built fresh for every engine, so suffix starts empty each time.

Workload: ``--per-category`` prompts of each `spec_prompts` category (the Spec-Bench dev
categories and HumanEval; seed ``--seed``), chat-templated once, in an order shuffled with the
same seed (a mixed stream, the same for every configuration). Request ids are
``<category>:<prompt id>``. Greedy, stop at EOS or ``--max-tokens``.

Configurations, in this order, each on a fresh `LLMEngine` with every drafter loaded:

- ``target``: policy ``fixed:none``, the target alone (the reference of every output);
- ``fixed:NAME`` per drafter, k = ``--num-draft-tokens``;
- ``random`` (a random drafter each step), ``spin`` (the learning policy; it picks k too);
- ``oracle``: each request the arm (a drafter at k, or none) with the highest tokens/s on it
  among this level's ``target`` and ``fixed:NAME`` runs (`OraclePolicy.from_runs`; the table
  is saved as ``<out stem>_oracle_<level>.json`` and read by the engine).

Levels: ``b1``, prompts one at a time; ``c<N>`` (``--concurrency``, default 8), every prompt
submitted at once to an engine with ``max_num_seqs`` N (continuous batching). A request's
tokens/s is its new tokens over its seconds from submission to finish (queueing included at
c<N>); see `selection_report` for the aggregates and the tables.

Each engine first runs one untimed warm-up request per arm (``none`` and every drafter, named
explicitly, so the policy never sees them; suffix learns the same warm-up text in every
configuration). Per request the JSON keeps the output ids, events, `SpecStats`, the engine's
per-request choice counts and the run-length trace of the policy's choice at every step
(``[[label, steps], ...]``), and whether the output equals ``b1/target``'s (a mismatch is a
bug; the tables shout it).

The machine is shared: before each timing the script waits (up to ``--quiet-timeout`` s) for
other processes to use at most ``--max-busy`` of the CPU, and times again (``--retries``) when
they took more meanwhile. At batch 1 a prompt is re-timed after putting back what learns across
requests (policy, model-free drafters); at c<N> the whole level run is redone on a fresh
engine. ``others_busy`` above ``--max-busy`` marks a timing to distrust.

Partial JSON is written to ``--out`` after every timing; at the end the tables go to stdout
and ``<out stem>.md``, the plot of spin's choices per category to ``<out stem>_choices.png``.
``--render <json>`` redraws tables and plot of a saved run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from selection_report import (
    BATCH1,
    GATE,
    ORACLE,
    REFERENCE,
    SPIN,
    TARGET,
    level_label,
    markdown,
    plot_choices,
    summarize,
)
from spec_bench import DEFAULT_TARGET, SPEC_BENCH, first_diff, measured, raise_priority, result
from spec_prompts import CATEGORIES, WARMUP_TEXT, sample_prompts
from step_bench import add_quiet_flags, log, machine_info, wait_for_model

from spinserve.config.engine import (
    WEIGHT_FORMS,
    CacheConfig,
    EngineConfig,
    RuntimeConfig,
    SchedulerConfig,
)
from spinserve.config.sampling import SamplingParams
from spinserve.config.selection import SelectionConfig
from spinserve.config.speculative import NO_DRAFTER, SpecParams, SpeculativeConfig
from spinserve.engine.builder import build_engine
from spinserve.engine.engine import LLMEngine
from spinserve.engine.outputs import RequestOutput
from spinserve.loading import loader, zoo
from spinserve.selection.baselines import OraclePolicy
from spinserve.selection.policy import (
    NO_SPECULATION,
    Choice,
    Feedback,
    LoadView,
    RequestView,
    SelectionPolicy,
    StepTiming,
)
from spinserve.selection.spin import SpinParams
from spinserve.speculative.drafter import Drafter
from spinserve.speculative.registry import MODEL_FREE, build_drafter

REPO_ROOT = Path(__file__).resolve().parents[1]


class ChoiceRecorder:
    """A selection policy passed through, writing down each request's choice at every step
    as runs: ``{request_id: [[label, steps], ...]}``."""

    def __init__(self, policy: SelectionPolicy) -> None:
        self.policy = policy
        self.name = policy.name
        self.trace: dict[str, list[list]] = defaultdict(list)

    def choose(self, requests: Sequence[RequestView], load: LoadView) -> list[Choice]:
        choices = self.policy.choose(requests, load)
        for view, choice in zip(requests, choices, strict=True):
            runs = self.trace[view.request_id]
            if runs and runs[-1][0] == choice.label:
                runs[-1][1] += 1
            else:
                runs.append([choice.label, 1])
        return choices

    def observe(self, feedback: Sequence[Feedback], timing: StepTiming) -> None:
        self.policy.observe(feedback, timing)

    def finish(self, request_id: str) -> None:
        self.policy.finish(request_id)

    def gate(self, request_id: str, lookups, choice: Choice, num_running: int) -> Choice:
        """spin's step gate, its choice written over the one `choose` recorded."""
        gated = self.policy.gate(request_id, lookups, choice, num_running)
        runs = self.trace[request_id]
        if runs and gated != choice:
            runs[-1][1] -= 1
            if not runs[-1][1]:
                runs.pop()
            if runs and runs[-1][0] == gated.label:
                runs[-1][1] += 1
            else:
                runs.append([gated.label, 1])
        return gated

    def __getattr__(self, name: str):
        """Everything else (step-gate switches, learning, costs) is the policy's own."""
        if name.startswith("__") or name == "policy":  # copying: no policy yet
            raise AttributeError(name)
        return getattr(self.policy, name)


# ---------------------------------------------------------------- one timing


def request_record(
    out: RequestOutput, seconds: float, events: list, num_steps: int, trace: list
) -> dict:
    """``num_steps``: engine steps from the submission to the finish (at batch 1 the target
    forwards this request made, prefill chunks included)."""
    rec = result(list(out.token_ids), seconds, events, num_steps)
    stats = out.spec_stats
    rec["finish_reason"] = out.finish_reason
    # with the raw per-position counts: exact per-position rates over requests
    drafted = stats and stats.num_draft_steps
    rec["spec_stats"] = stats.to_dict() | dataclasses.asdict(stats) if drafted else None
    rec["choice_counts"] = out.choice_counts
    rec["choice_trace"] = trace
    return rec


def run_requests(
    engine: LLMEngine, items: list[tuple[str, list[int]]], params: SamplingParams
) -> dict[str, dict]:
    """Submit every (request id, prompt ids) at once and step until all finish; per request
    its record, times from the submission."""
    start = time.perf_counter()
    for rid, ids in items:
        engine.add_request(ids, params, request_id=rid)
    events: dict[str, list[list[float]]] = {rid: [] for rid, _ in items}
    finals: dict[str, tuple[RequestOutput, float, int]] = {}
    max_steps = sum(len(ids) for _, ids in items) + len(items) * (params.max_tokens + 16)
    for step in range(1, max_steps + 1):
        outputs = engine.step()
        now = time.perf_counter() - start
        for out in outputs:
            if out.new_token_ids:
                events[out.request_id].append([now, len(out.new_token_ids)])
            if out.finished:
                finals[out.request_id] = (out, now, step)
        if len(finals) == len(items):
            break
    else:
        raise RuntimeError(
            f"{len(items) - len(finals)} requests unfinished after {max_steps} steps"
        )
    trace = engine.policy.trace  # type: ignore[attr-defined]  # a ChoiceRecorder
    return {
        rid: request_record(out, seconds, events[rid], steps, trace.get(rid, []))
        for rid, (out, seconds, steps) in finals.items()
    }


def snapshot(engine: LLMEngine) -> Callable[[], None]:
    """A function that puts back what learns across requests (the policy, model-free
    drafters, the choice counts) as it is now, and forgets the prefix cache's unheld blocks:
    a re-timed prompt must not meet its own earlier try."""
    policy = copy.deepcopy(engine.policy)
    drafters = engine.drafters
    # On the compute lane, behind the drafters' queued `finish` calls that change them
    learned = engine.lane.run(
        lambda: {n: copy.deepcopy(d) for n, d in drafters.items() if n in MODEL_FREE}
    )
    counts = dict(engine.speculator.choice_counts)

    def reset() -> None:
        engine.policy = copy.deepcopy(policy)
        for name, drafter in copy.deepcopy(learned).items():
            engine.replace_drafter(name, drafter)
        engine.speculator.choice_counts.clear()
        engine.speculator.choice_counts.update(counts)
        engine.blocks.clear_cache()

    return reset


# ---------------------------------------------------------------- the run


class Bench:
    """Models, workload, settings and every result so far; saved after each timing."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = time.monotonic()
        self.runtime = RuntimeConfig(weights=args.weights, num_threads=args.threads)
        self.levels = [BATCH1] + ([f"c{args.concurrency}"] if args.concurrency else [])
        self.configs = args.configs or [
            TARGET,
            *(f"fixed:{d}" for d in args.drafters),
            "random",
            SPIN,
            ORACLE,
        ]
        prompts = sample_prompts(args.spec_bench, args.data_cache, args.per_category, args.seed)
        prompts = [p for p in prompts if p.category in args.categories]
        self.prompts = {f"{p.category}:{p.prompt_id}": p for p in prompts}
        self.order = list(self.prompts)
        random.Random(args.seed).shuffle(self.order)
        self.target = loader.load(args.target, self.runtime, args.cache_dir, fetch_missing=False)
        log(f"{args.target}: loaded in {self.target.load_seconds:.1f} s")
        self.model_drafters = {
            name: self.load_drafter(name) for name in args.drafters if name not in MODEL_FREE
        }
        chat = self.target.tokenizer.apply_chat_template
        self.prompt_ids = {
            rid: chat([{"role": "user", "content": self.prompts[rid].text}]) for rid in self.order
        }
        self.items = [(rid, self.prompt_ids[rid]) for rid in self.order]
        self.warm_ids = chat([{"role": "user", "content": WARMUP_TEXT}])
        self.units_done: dict[str, int] = defaultdict(int)
        self.level_seconds: dict[str, float] = defaultdict(float)
        self.level_start: dict[str, float] = {}
        self.report: dict = {
            "command": " ".join([".venv/bin/python benchmarks/selection_bench.py", *sys.argv[1:]]),
            "machine": machine_info(args.threads),
            "settings": settings(args, self.runtime),
            "sample": [{"category": p.category, "prompt_id": p.prompt_id} for p in prompts],
            "order": self.order,
            "notes": [],
            "results": [],
            "runs": {},
            "oracle_tables": {},
        }
        # with weights auto, a GGUF source means its 4-bit blocks run on the int4 kernel
        gguf = zoo.source_gguf(loader.resolve(args.target, args.cache_dir, fetch_missing=False))
        self.report["settings"]["target_source_gguf"] = gguf and gguf.name
        self.report["settings"]["target_load_seconds"] = self.target.load_seconds
        self.report["settings"]["target_weight_bytes"] = self.target.model.weight_bytes()

    def load_drafter(self, name: str) -> Drafter:
        # A resolved path: the registry alone would fetch a missing zoo model.
        path = loader.resolve(name, self.args.cache_dir, fetch_missing=False)
        start = time.perf_counter()
        drafter = build_drafter(str(path), self.target, self.speculative(), self.runtime)
        log(f"{name}: loaded in {time.perf_counter() - start:.1f} s")
        return drafter

    def speculative(self) -> SpeculativeConfig:
        return SpeculativeConfig(
            drafters=tuple(self.args.drafters), num_draft_tokens=self.args.num_draft_tokens
        )

    def engine(self, name: str, level: str) -> LLMEngine:
        """A fresh engine for configuration ``name``, warmed up, its policy recorded."""
        args = self.args
        oracle = str(self.oracle_path(level)) if name == ORACLE else None
        config = EngineConfig(
            scheduler=SchedulerConfig(max_num_seqs=max(args.concurrency, 1)),
            cache=CacheConfig(kv_cache_gib=args.kv_cache_gib),
            runtime=self.runtime,
            speculative=self.speculative(),
            selection=SelectionConfig(
                policy="fixed:none" if name == TARGET else name.removesuffix(GATE),
                policy_seed=args.policy_seed,
                oracle_table=oracle,
                step_gate=name.endswith(GATE),
            ),
        )
        drafters = {
            d: MODEL_FREE[d]() if d in MODEL_FREE else self.model_drafters[d] for d in args.drafters
        }
        engine = build_engine(self.target, config, drafters=drafters)
        engine.policy = ChoiceRecorder(engine.policy)
        arms = [NO_DRAFTER, *drafters]
        engine.generate(
            [self.warm_ids] * len(arms),
            SamplingParams(max_tokens=args.warmup_tokens),
            [SpecParams(drafter=a) for a in arms],
        )
        return engine

    def oracle_path(self, level: str) -> Path:
        out = self.args.out
        return out.with_name(f"{out.stem}_oracle_{level}.json")

    # --- results ---------------------------------------------------------------------------

    def reference(self, config: str, rid: str) -> list[int] | None:
        for r in self.report["results"]:
            if r["config"] == config and r["request_id"] == rid:
                return r["output_ids"]
        return None

    def record(self, level: str, name: str, rid: str, rec: dict) -> None:
        prompt = self.prompts[rid]
        config = f"{level}/{name}"
        rec = {
            "config": config,
            "level": level,
            "name": name,
            "request_id": rid,
            "category": prompt.category,
            "category_index": CATEGORIES.index(prompt.category),
            "prompt_id": prompt.prompt_id,
            "position": self.order.index(rid),
            "num_prompt_tokens": len(self.prompt_ids[rid]),
        } | rec
        ref = rec["output_ids"] if config == REFERENCE else self.reference(REFERENCE, rid)
        level_ref = (
            rec["output_ids"] if name == TARGET else self.reference(f"{level}/{TARGET}", rid)
        )
        rec["first_diff"] = None if ref is None else first_diff(rec["output_ids"], ref)
        rec["same_as_target"] = ref is not None and rec["first_diff"] is None
        rec["same_as_level_target"] = level_ref == rec["output_ids"]
        self.report["results"].append(rec)
        same = "same" if rec["same_as_target"] else f"DIFFERS from {REFERENCE} @{rec['first_diff']}"
        choices = ", ".join(f"{label} x{n}" for label, n in (rec["choice_counts"] or {}).items())
        log(
            f"  {config} {rid}: {rec['num_new_tokens']} tokens in {rec['wall_s']:.1f} s = "
            f"{rec['tokens_per_s']:.2f} tok/s, {same}, others {rec['others_busy']:.0%}"
            + (f"; {choices}" if choices else "")
        )
        if not rec["same_as_target"]:
            log(f"!!! LOSSLESSNESS VIOLATION: {config} on {rid}")

    def save(self) -> None:
        self.report["summary"] = summarize(self.report)
        self.report["run_minutes"] = (time.monotonic() - self.start) / 60
        self.args.out.write_text(json.dumps(self.report, indent=1) + "\n")

    def progress(self, level: str, units: int) -> None:
        """Count ``units`` prompt timings of ``level`` done; log the ETA from the seconds per
        prompt timing so far at each level (engine setup and waits for quiet included)."""
        self.units_done[level] += units
        self.level_seconds[level] = time.monotonic() - self.level_start[level]
        per_level = len(self.configs) * len(self.items)
        rate = {lv: self.level_seconds[lv] / n for lv, n in self.units_done.items() if n}
        fallback = rate.get(BATCH1) or next(iter(rate.values()))
        left = sum((per_level - self.units_done[lv]) * rate.get(lv, fallback) for lv in self.levels)
        done = sum(self.units_done.values())
        log(
            f"{done}/{per_level * len(self.levels)} prompt timings in "
            f"{(time.monotonic() - self.start) / 60:.1f} min; ETA ~{left / 60:.0f} min"
        )


def settings(args: argparse.Namespace, runtime: RuntimeConfig) -> dict:
    keep = {k: v for k, v in vars(args).items() if k not in ("render", "priority")}
    keep = {k: str(v) if isinstance(v, Path) else v for k, v in keep.items()}
    return keep | {
        "runtime": dataclasses.asdict(runtime),
        "spin_params": dataclasses.asdict(SpinParams(seed=args.policy_seed)),
        "stop_policy": "stop at EOS or after max_tokens new tokens, every configuration",
    }


def run_batch1(bench: Bench, name: str) -> None:
    args = bench.args
    engine = bench.engine(name, BATCH1)
    params = SamplingParams(max_tokens=args.max_tokens)
    for i, (rid, ids) in enumerate(bench.items, start=1):
        log(f"{BATCH1}/{name}: prompt {i}/{len(bench.items)} {rid}")
        rec = measured(
            lambda rid=rid, ids=ids: run_requests(engine, [(rid, ids)], params)[rid],
            args,
            snapshot(engine),
        )
        bench.record(BATCH1, name, rid, rec)
        bench.progress(BATCH1, 1)
        bench.save()
    bench.report["runs"][f"{BATCH1}/{name}"] = {
        "wall_s": sum(
            r["wall_s"] for r in bench.report["results"] if r["config"] == f"{BATCH1}/{name}"
        ),
        "choice_summary": engine.choice_summary(),
    }


def run_concurrent(bench: Bench, name: str, level: str) -> None:
    args = bench.args
    params = SamplingParams(max_tokens=args.max_tokens)
    log(f"{level}/{name}: {len(bench.items)} prompt(s) at once")

    def once() -> dict:
        engine = bench.engine(name, level)
        by_id = run_requests(engine, bench.items, params)
        return {"by_id": by_id, "choice_summary": engine.choice_summary()}

    out = measured(once, args, None)
    wall = max(r["wall_s"] for r in out["by_id"].values())  # all submitted at 0
    for rid, _ in bench.items:
        bench.record(
            level, name, rid, out["by_id"][rid] | {k: out[k] for k in ("others_busy", "attempts")}
        )
    bench.report["runs"][f"{level}/{name}"] = {
        "wall_s": wall,
        "choice_summary": out["choice_summary"],
        "others_busy": out["others_busy"],
        "attempts": out["attempts"],
    }
    bench.progress(level, len(bench.items))
    bench.save()


def write_oracle(bench: Bench, level: str) -> None:
    """The oracle table of ``level``: per request the fastest of its target and fixed runs."""
    k = bench.args.num_draft_tokens
    by_request: dict[str, dict[Choice, float]] = defaultdict(dict)
    for r in bench.report["results"]:
        if r["level"] == level and (r["name"] == TARGET or r["name"].startswith("fixed:")):
            arm = NO_SPECULATION if r["name"] == TARGET else Choice(r["name"].split(":", 1)[1], k)
            by_request[r["request_id"]][arm] = r["tokens_per_s"]
    oracle = OraclePolicy.from_runs(by_request)
    oracle.save(bench.oracle_path(level))
    bench.report["oracle_tables"][level] = {rid: c.label for rid, c in oracle.table.items()}
    log(f"{level}/oracle: " + ", ".join(f"{r}={c.label}" for r, c in oracle.table.items()))


def run(bench: Bench) -> None:
    for level in bench.levels:
        bench.level_start[level] = time.monotonic()
        for name in bench.configs:
            log(f"=== {level}/{name} ({level_label(level)})")
            if name == ORACLE:
                write_oracle(bench, level)
            if level == BATCH1:
                run_batch1(bench, name)
            else:
                run_concurrent(bench, name, level)
            gc.collect()
    bench.save()


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--drafters", nargs="*", default=None, help="default: the target's zoo set")
    p.add_argument("--weights", choices=WEIGHT_FORMS, default=RuntimeConfig.weights)
    p.add_argument("--max-tokens", type=int, default=64, help="most new tokens per prompt")
    p.add_argument("--num-draft-tokens", type=int, default=4, help="k of fixed and random")
    p.add_argument("--per-category", type=int, default=2, help="prompts per category")
    p.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help=f"configurations in order (default: target, fixed:each, random, spin, oracle); "
        f"spin{GATE} is spin with its step gate",
    )
    p.add_argument(
        "--categories", nargs="+", choices=CATEGORIES, default=list(CATEGORIES), help="a subset"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt sample and order")
    p.add_argument("--policy-seed", type=int, default=0, help="seed of random and spin")
    p.add_argument(
        "--concurrency", type=int, default=8, help="max_num_seqs of the second level (0: none)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--warmup-tokens", type=int, default=8, help="tokens of each warm-up request")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="the target's KV pool")
    add_quiet_flags(p, quiet_timeout=60.0, retries=1, what="timing")
    p.add_argument("--priority", type=int, default=None, help="nice value, e.g. -10 (needs root)")
    p.add_argument("--render", type=Path, default=None, help="only redraw tables and plot")
    p.add_argument("--spec-bench", type=Path, default=SPEC_BENCH)
    p.add_argument(
        "--data-cache", type=Path, default=Path.home() / ".cache" / "spinserve" / "datasets"
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="spinserve cache (default: zoo's)")
    p.add_argument("--wait-timeout", type=float, default=1800.0, help="seconds to wait per model")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "selection_bench.json")
    args = p.parse_args(argv)
    if min(args.max_tokens, args.per_category, args.threads, args.warmup_tokens) < 1:
        p.error("--max-tokens, --per-category, --threads and --warmup-tokens must be >= 1")
    if args.concurrency == 1 or args.concurrency < 0 or args.retries < 0:
        p.error("--concurrency must be 0 (batch 1 only) or >= 2, --retries >= 0")
    if not 1 <= args.num_draft_tokens <= 16:
        p.error("--num-draft-tokens must be in [1, 16]")
    if args.drafters is None:
        args.drafters = list(zoo.default_drafters(args.target))
    args.cache_dir = zoo.resolve_cache_dir(str(args.cache_dir) if args.cache_dir else None)
    return args


def finish(report: dict, out: Path) -> None:
    """Tables to stdout and ``<out stem>.md``, the choice plot next to them."""
    table = markdown(report)
    out.with_suffix(".md").write_text(table + "\n")
    png = out.with_name(f"{out.stem}_choices.png")
    plot_choices(report, png)
    log(f"wrote {out.with_suffix('.md')} and {png}")
    print(table)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text())
        report["summary"] = summarize(report)
        finish(report, args.render)
        return
    if args.priority is not None:
        raise_priority(args.priority)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in [args.target, *(d for d in args.drafters if d not in MODEL_FREE)]:
        wait_for_model(name, args.cache_dir, args.wait_timeout)
    bench = Bench(args)
    log(f"order: {', '.join(bench.order)}")
    run(bench)
    log(f"wrote {args.out} in {bench.report['run_minutes']:.1f} min")
    finish(bench.report, args.out)


if __name__ == "__main__":
    main()

"""Record real drafts once, then replay selection policies on them in seconds.

``collect`` runs the target alone (greedy) on the selection benchmark's prompts and, at every
position of each output, asks every drafter for ``--max-draft`` tokens on the true prefix and
records how many it proposed and how many match the output, with what a per-step predictor
may read before verification: the proposed ids, the drafter's per-token scores
(`Draft.scores`), what a lookup draft rests on (`SuffixDrafter.match_support`,
`ngram_support`), and, from one teacher-forced forward over prompt + output after the greedy
run, the target's and each same-tokenizer model drafter's top-1 probability, entropy and
argmax hit at every output position (`research.selection.step_features`; older recordings
without them still replay). It also measures the costs the
replay needs on this machine: the target's forward of 1..``--max-draft``+1 tokens of one
sequence at a few context lengths, and each drafter's call (per round, per context token, per
token caught up); ``costs`` measures those again into an existing recording (``--out``).
``replay`` runs policies on the recording (`research.selection.replay`):
the target alone, ``fixed:NAME@K``, ``spin``, ``spin[KEY=VALUE,...]``, ``oracle`` (per
request the fastest single drafter and k, or none, in hindsight) and ``hindsight`` or
``hindsight:NAME+NAME`` (per step the best drafter and k knowing what each draft will pass,
catch-ups free: a bound on any policy over those drafters), over several request orders and
policy seeds, and prints tokens/s relative to the target per category.

Reproduce (from the repository root; collect ~12 minutes for 28 prompts, replay seconds)::

    .venv/bin/python benchmarks/selection_trace.py collect --per-category 4 --max-tokens 64 \\
        --out results/selection_trace.json
    .venv/bin/python benchmarks/selection_trace.py replay benchmarks/traces/selection_trace.json \\
        --configs fixed:ngram@4 fixed:suffix@2 spin "spin[exploration=0.25]" oracle \\
        hindsight:ngram+suffix hindsight

(``benchmarks/traces/selection_trace.json`` is the recording of 2026-11-28, docs/benchmarks.md;
``benchmarks/traces/step_trace.json`` the same prompts with the per-step evidence, 2026-12-07,
and ``step_trace_seed1.json`` 28 more (``--seed 1``), their costs those of 2026-11-28: their
own were measured while other work loaded the machine and are kept as ``cost_contended``.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from selection_ab import spin_params
from selection_bench import Bench, log
from selection_bench import parse_args as bench_args

from spinserve.config.sampling import SamplingParams
from spinserve.runtime.block_manager import blocks_for
from spinserve.selection.baselines import FixedPolicy
from spinserve.selection.policy import NO_SPECULATION, Choice, SelectionPolicy
from spinserve.speculative.draft_model import common_prefix_length
from spinserve.speculative.drafter import DraftRequest
from spinserve.speculative.model_drafter import ModelDrafter
from spinserve.speculative.ngram import ngram_support
from spinserve.speculative.registry import MODEL_FREE
from spinserve.types.batch import SeqChunk, StepBatch

# research/ sits beside spinserve/ and is not installed: import it from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from research.selection.replay import (
    CostModel,
    DrafterCost,
    TracedRequest,
    hindsight,
    oracle,
    replay,
    shuffled,
)
from research.selection.variants import VariantPolicy

CONTEXTS = (64, 512, 1536)


def trace_request(
    bench: Bench, engine, drafters: dict, rid: str, max_draft: int, confidence: dict
) -> dict:
    """A `TracedRequest`'s JSON and, per output position, what a per-step predictor may read
    before verification (`step_evidence`)."""
    prompt = bench.prompt_ids[rid]
    greedy = SamplingParams(max_tokens=bench.args.max_tokens)
    [result] = engine.generate([prompt], greedy)
    output = list(result.token_ids)
    drafts: dict[str, list[tuple[int, int]]] = {name: [] for name in drafters}
    proposals: dict[str, list[list[int]]] = {name: [] for name in drafters}
    scores: dict[str, list[list[float] | None]] = {name: [] for name in drafters}
    support: dict[str, list] = {"suffix": [], "ngram": []}
    for t in range(len(output)):
        ids = prompt + output[:t]
        for name, drafter in drafters.items():
            [draft] = drafter.propose([DraftRequest(rid, ids, max_draft, greedy)])
            proposed = draft.token_ids[:max_draft]
            drafts[name].append((len(proposed), common_prefix_length(proposed, output[t:])))
            proposals[name].append(proposed)
            scores[name].append(draft.scores and [round(x, 4) for x in draft.scores[:max_draft]])
            if name == "suffix":
                support[name].append(drafter.match_support(rid))
            elif name == "ngram":
                n = round(draft.scores[0] * drafter.max_n) if proposed else 0
                support[name].append((n, *(ngram_support(ids, n, proposed[0]) if n else (0, 0))))
    for drafter in drafters.values():
        drafter.finish(rid, prompt + output)
    traced = TracedRequest(rid, bench.prompts[rid].category, len(prompt), len(output), drafts)
    evidence = {
        "output_ids": output,
        "proposals": proposals,
        "scores": scores,
        "support": {name: rows for name, rows in support.items() if name in drafters},
        "confidence": {
            name: teacher_forced(runner, prompt, output) for name, runner in confidence.items()
        },
    }
    return {**traced.to_json(), **evidence}


def teacher_forced(runner, prompt: list[int], output: list[int]) -> list[list[float]]:
    """Per output position t, ``[top-1 probability, entropy in nats, argmax == output[t]]`` of
    the model's next-token distribution after ``prompt + output[:t]`` (one forward over all
    of it, on block ids from 0: call it when the runner's pool holds no live sequence)."""
    ids = prompt + output[:-1]
    blocks = list(range(blocks_for(len(ids), runner.block_size)))
    logits = runner.execute(StepBatch([SeqChunk("teacher", ids, 0, blocks, len(output))]))
    logp = torch.log_softmax(logits.float(), dim=-1)  # [len(output), vocab]
    top, argmax = logp.max(dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)
    runner.release("teacher")
    hits = (argmax == torch.tensor(output)).tolist()
    return [
        [round(p, 4), round(h, 4), int(hit)]
        for p, h, hit in zip(top.exp().tolist(), entropy.tolist(), hits, strict=True)
    ]


def confidence_runners(engine, drafters: dict) -> dict:
    """The target's runner and each same-tokenizer model drafter's (its model, its KV pool);
    a cross-tokenizer drafter's distributions are over another vocabulary: left out."""
    runners = {"target": engine.runner}
    for name, drafter in drafters.items():
        if isinstance(drafter, ModelDrafter):
            runners[name] = drafter._model.runner  # the drafter's own pool, idle between calls
    return runners


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_costs(bench: Bench, engine, max_tokens: int, repeats: int) -> list[list[float]]:
    """Per context in `CONTEXTS`, the median seconds of a forward of 1..max_tokens tokens of
    one scratch sequence; contexts and lengths interleaved, so drift spreads over all."""
    runner, block_size = engine.runner, engine.blocks.block_size
    text = [t for rid in bench.order for t in bench.prompt_ids[rid]]
    tables, first = {}, 0
    for context in CONTEXTS:
        ids = (text * (context // len(text) + 1))[:context]
        count = blocks_for(context + max_tokens, block_size)
        tables[context] = list(range(first, first + count))
        first += count
        runner.execute(StepBatch([SeqChunk(f"cost{context}", ids, 0, tables[context], 1)]))
    times = {(c, n): [] for c in CONTEXTS for n in range(1, max_tokens + 1)}
    for _ in range(repeats):
        for context, n in times:
            chunk = SeqChunk(f"cost{context}", text[:n], context, tables[context], n)
            start = time.perf_counter()
            runner.execute(StepBatch([chunk]))
            times[(context, n)].append(time.perf_counter() - start)
    rows = []
    for context in CONTEXTS:
        runner.release(f"cost{context}")
        rows.append([statistics.median(times[(context, n)]) for n in range(1, max_tokens + 1)])
        log(f"forward at context {context}: " + " ".join(f"{t * 1e3:.1f}" for t in rows[-1]))
    return rows


def drafter_cost(name: str, drafter, text: list[int], repeats: int) -> DrafterCost:
    """Calls of a drafter already in step with a sequence (one new token each time) for 1 and
    4 tokens at two context lengths, and calls on unseen sequences of two lengths."""
    greedy = SamplingParams(max_tokens=16)

    def in_step(context: int, k: int) -> float:
        ids = text[:context]
        drafter.propose([DraftRequest("cost", ids, k, greedy)])
        times = []
        for i in range(repeats):
            ids = [*ids, text[context + i]]
            start = time.perf_counter()
            drafter.propose([DraftRequest("cost", ids, k, greedy)])
            times.append(time.perf_counter() - start)
        drafter.finish("cost", [])
        return statistics.median(times)

    def unseen(context: int) -> float:
        def call() -> None:
            drafter.propose([DraftRequest("cost", text[:context], 1, greedy)])
            drafter.finish("cost", [])

        return median_seconds(call, repeats)

    short, long = CONTEXTS[0], CONTEXTS[-1]
    one, four, one_long = in_step(short, 1), in_step(short, 4), in_step(long, 1)
    rounds = name not in MODEL_FREE
    per_round = max((four - one) / 3, 0.0) if rounds else 0.0
    call = max(one - per_round, 0.0)
    per_context = max((one_long - one) / (long - short), 0.0)
    catchup = max((unseen(512) - unseen(64)) / (512 - 64), 0.0)
    cost = DrafterCost(call, per_round, per_context, catchup, rounds)
    log(
        f"{name}: call {call * 1e3:.2f} ms, per round {per_round * 1e3:.2f} ms, "
        f"per context token {per_context * 1e6:.2f} us, catch-up {catchup * 1e3:.3f} ms/token"
    )
    return cost


def collect(argv: list[str], trace: bool = True) -> None:
    """Record drafts and costs (``trace``), or only re-measure the costs of ``--out``."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--max-draft", type=int, default=8, help="draft tokens asked per position")
    own.add_argument("--repeats", type=int, default=15, help="timings per cost point")
    mine, rest = own.parse_known_args(argv)
    args = bench_args(rest)
    old = None if trace else json.loads(args.out.read_text())
    bench = Bench(args)
    engine = bench.engine("target", "b1")
    drafters = {
        d: MODEL_FREE[d]() if d in MODEL_FREE else bench.model_drafters[d] for d in args.drafters
    }
    requests, confidence = [], confidence_runners(engine, drafters)
    for i, rid in enumerate(bench.order if trace else (), 1):
        requests.append(trace_request(bench, engine, drafters, rid, mine.max_draft, confidence))
        log(f"traced {i}/{len(bench.order)} {rid}: {requests[-1]['num_output_tokens']} tokens")
    text = [t for rid in bench.order for t in bench.prompt_ids[rid]]
    text = (text * (2 * CONTEXTS[-1] // len(text) + 1))[: 2 * CONTEXTS[-1]]
    # On the engine's compute lane, as served: one thread for all model work
    forward = engine.lane.run(forward_costs, bench, engine, mine.max_draft + 1, mine.repeats)
    costs = {
        name: engine.lane.run(drafter_cost, name, d, text, mine.repeats)
        for name, d in drafters.items()
    }
    cost = CostModel(CONTEXTS, tuple(map(tuple, forward)), costs)
    settings = json.loads(json.dumps({**vars(args), "max_draft": mine.max_draft}, default=str))
    report = old or {"settings": settings, "requests": requests}
    report["cost"] = cost.to_json()
    report["cost_measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.write_text(json.dumps(report))
    log(f"wrote {args.out}")


def make_policy(name: str, drafters: list[str], seed: int) -> SelectionPolicy:
    if name == "target":
        return FixedPolicy(NO_SPECULATION)
    if name.startswith("fixed:"):
        return FixedPolicy(Choice.parse(name.removeprefix("fixed:")))
    base, _, spec = name.partition("[")
    if base != "spin":
        raise SystemExit(
            f"unknown configuration {name!r}: "
            "target, fixed:NAME@K, spin[...], oracle, hindsight[:NAME+NAME]"
        )
    params = spin_params(spec.rstrip("]") + f",seed={seed}")
    return VariantPolicy(drafters, params)


def hindsight_drafters(config: str, drafters: list[str]) -> list[str]:
    """``hindsight`` -> every drafter; ``hindsight:A+B`` -> A and B."""
    base, _, names = config.partition(":")
    chosen = names.split("+") if names else drafters
    unknown = [n for n in chosen if n not in drafters]
    if base != "hindsight" or unknown:
        raise SystemExit(f"configuration {config!r}: hindsight[:NAME+NAME] of {drafters}")
    return chosen


def oracle_arms(drafters: list[str], cost: CostModel) -> list[Choice]:
    """No drafts, and every drafter at every k the recording allows."""
    lengths = range(1, cost.max_tokens)
    return [NO_SPECULATION, *(Choice(d, k) for d in drafters for k in lengths)]


def replay_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="selection_trace.py replay")
    p.add_argument("trace", type=Path)
    p.add_argument("--configs", nargs="+", default=["spin"], metavar="NAME")
    p.add_argument("--orders", type=int, default=4, help="request orders replayed")
    p.add_argument("--seeds", type=int, default=3, help="policy seeds per order")
    args = p.parse_args(argv)
    data = json.loads(args.trace.read_text())
    cost = CostModel.from_json(data["cost"])
    requests = [TracedRequest.from_json(r) for r in data["requests"]]
    drafters = list(cost.drafters)
    categories = sorted({r.category for r in requests})
    configs = ["target", *args.configs]
    ratios: dict[str, list[list[float]]] = {c: [] for c in configs}
    for order in range(args.orders):
        ordered = shuffled(requests, order)
        base = replay(make_policy("target", drafters, 0), ordered, cost)
        for config in configs:
            seeds = args.seeds if config.startswith("spin") else 1
            for seed in range(seeds):
                if config == "oracle":
                    result = oracle(ordered, cost, oracle_arms(drafters, cost))
                elif config.startswith("hindsight"):
                    result = hindsight(ordered, cost, hindsight_drafters(config, drafters))
                else:
                    result = replay(make_policy(config, drafters, seed), ordered, cost)
                row = [result.tokens_per_second(c) / base.tokens_per_second(c) for c in categories]
                ratios[config].append([*row, result.tokens_per_second() / base.tokens_per_second()])
    print(f"{len(requests)} requests, {args.orders} orders x {args.seeds} seeds (spin)")
    header = ["configuration", *categories, "all", "all min-max"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" + "---:|" * (len(header) - 1))
    for config in configs:
        runs = ratios[config]
        means = [statistics.mean(col) for col in zip(*runs, strict=True)]
        spread = f"{min(r[-1] for r in runs):.3f}-{max(r[-1] for r in runs):.3f}"
        cells = " | ".join(f"{m:.2f}x" for m in means[:-1])
        print(f"| {config} | {cells} | {means[-1]:.3f}x | {spread} |")


def main() -> None:
    commands = {
        "collect": collect,
        "costs": lambda argv: collect(argv, trace=False),
        "replay": replay_main,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit("usage: selection_trace.py {collect,costs,replay} ... (see the docstring)")
    commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()

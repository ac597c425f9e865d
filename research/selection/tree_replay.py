"""Would token trees pay? Replays, on a step recording, verifying several drafters' drafts in one
target forward (a trie sharing common prefixes) against verifying one drafter's chain.

At output position ``t`` a policy names a `Tree`: branches ``(drafter, depth)``, each the first
``depth`` tokens of that drafter's recorded proposal (a chain has one). The target's forward has
a row per distinct trie node plus the root (the bonus token's row); the accepted tokens are the
longest branch match. The request advances by the accepted tokens and one more. A step costs
that forward, each drafter named once (a model's rounds, a lookup's call) and a model's catch-up
on committed tokens it did not draft. Prompt prefills are left out: ratios are decode tokens/s
over the target alone's on the same requests.

Cost models: ``cpu``, the recording's forward table (rows -> seconds, linear between measured
context lengths) with the model drafters' rounds measured on the same machine; ``gpu``, the
accelerator profile of `workloads.HARDWARE` (forward = fixed + per_token * rows). Neither
charges a tree's attention mask or the copy of an accepted side branch's KV entries; the report
gives the seconds per branched step that would erase the best tree's gain over the best chain.

Reproduce (from the repository root; about a minute; a prompt in both recordings counts once,
the first recording's costs are used)::

    .venv/bin/python -m research.selection.tree_replay benchmarks/traces/step_trace.json \\
        benchmarks/traces/step_trace_seed1.json --out benchmarks/results/tree_replay.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from research.selection.replay import CostModel, DrafterCost, hindsight
from research.selection.step_features import StepRequest, load_steps
from research.selection.step_predict import folds
from research.selection.workloads import HARDWARE, NGRAM, QWEN_05B, SMOLLM, SUFFIX

COMMAND = ".venv/bin/python -m research.selection.tree_replay"
QWEN, SMOL = "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"
LOOKUPS, MODELS = (SUFFIX, NGRAM), (QWEN, SMOL)
DRAFTERS = (*LOOKUPS, *MODELS)
SHORT = {SUFFIX: "suffix", NGRAM: "ngram", QWEN: "qwen", SMOL: "smol"}
# Model drafter rounds measured against a 33.5 ms target decode (scaled to the recording's)
MEASURED_DECODE, QWEN_ROUND, SMOL_ROUND, LOOKUP_CALL = 0.0335, 0.0165, 0.0062, 30e-6
BUDGETS = {"cpu": (4, 6, 8, 9), "gpu": (4, 6, 8, 9, 17, 33)}  # rows, root included
GPU_ROWS = 33

Tree = tuple[tuple[str, int], ...]  # (drafter, depth) branches
Policy = Callable[["Position"], Tree]  # may read the proposals, never the output


@dataclass(frozen=True)
class Position:
    """The drafts at one output position: per drafter an interned id per prefix (equal ids,
    equal prefixes; so a trie's rows are the distinct ids) and how many tokens match."""

    nodes: Mapping[str, tuple[int, ...]]
    matched: Mapping[str, int]

    def first(self, drafter: str) -> int | None:
        ids = self.nodes[drafter]
        return ids[0] if ids else None


@dataclass(frozen=True)
class Request:
    request_id: str
    category: str
    num_prompt_tokens: int
    positions: tuple[Position, ...]  # one per output token


def load(paths: Sequence[Path]) -> list[StepRequest]:
    """The recordings' requests, a prompt recorded twice counted once (the first)."""
    return list({s.request_id: s for p in reversed(paths) for s in load_steps(p)}.values())


def to_request(step: StepRequest) -> Request:
    """Every output position's `Position` (prefix ids interned per position)."""
    out = []
    for t in range(step.traced.num_output_tokens):
        ids: dict[tuple[int, ...], int] = {}
        drafts = {name: step.proposal(name, t) for name in DRAFTERS}
        nodes = {
            n: tuple(ids.setdefault(tuple(d[:j]), len(ids)) for j in range(1, len(d) + 1))
            for n, d in drafts.items()
        }
        out.append(Position(nodes, {name: step.matched(name, t) for name in DRAFTERS}))
    tr = step.traced
    return Request(tr.request_id, tr.category, tr.num_prompt_tokens, tuple(out))


# ---------------------------------------------------------------- cost models


def cpu_costs(recorded: Mapping) -> CostModel:
    """The recording's forward table; rounds of 16.5 ms (0.5B, k per k tokens) and 6.2 ms
    (SmolLM2, k + 1: its tokenizer's tokens cover the target's k) at a 33.5 ms decode, scaled
    to the recording's; catch-up per token as recorded; lookups 30 us a call."""
    scale = recorded["forward"][0][0] / MEASURED_DECODE
    catchup = {n: recorded["drafters"][n]["catchup"] for n in MODELS}
    return CostModel(
        tuple(recorded["contexts"]),
        tuple(tuple(row) for row in recorded["forward"]),
        {
            SUFFIX: DrafterCost(LOOKUP_CALL, 0.0, rounds=False),
            NGRAM: DrafterCost(LOOKUP_CALL, 0.0, rounds=False),
            QWEN: DrafterCost(0.0, QWEN_ROUND * scale, catchup=catchup[QWEN]),
            SMOL: DrafterCost(SMOL_ROUND * scale, SMOL_ROUND * scale, catchup=catchup[SMOL]),
        },
    )


def gpu_costs() -> CostModel:
    """`HARDWARE["gpu"]` at batch 1: forward independent of context; SmolLM2 k + 1 rounds."""
    hw = HARDWARE["gpu"]
    row = tuple(hw.forward_seconds(n) for n in range(1, GPU_ROWS + 1))
    costs = {}
    for mine, theirs in ((SUFFIX, SUFFIX), (NGRAM, NGRAM), (QWEN, QWEN_05B), (SMOL, SMOLLM)):
        d = hw.drafter(theirs)
        per = d.call_seconds(1, 1)
        extra = per if mine == SMOL else 0.0
        costs[mine] = DrafterCost(extra, per, catchup=d.catchup, rounds=d.rounds)
    return CostModel((0,), (row,), costs)


# ---------------------------------------------------------------- replay


@dataclass(frozen=True)
class Outcome:
    """Per request, the decode seconds and the steps whose tree had more than one branch."""

    seconds: float
    branched: int


def verify(at: Position, tree: Tree, room: int) -> tuple[int, int, dict[str, int]]:
    """(rows, accepted, each drafter's depth asked for) of ``tree`` with ``room`` tokens left."""
    nodes: set[int] = set()
    accepted, depths = 0, {}
    for name, depth in tree:
        depth = min(depth, room)
        if depth <= 0:
            continue
        depths[name] = max(depths.get(name, 0), depth)
        nodes.update(at.nodes[name][:depth])
        accepted = max(accepted, min(at.matched[name], depth))
    return len(nodes) + 1, accepted, depths


def replay_request(request: Request, policy: Policy, cost: CostModel) -> Outcome:
    """One request step by step under ``policy``; the first output token is the prefill's."""
    seen = dict.fromkeys(MODELS, request.num_prompt_tokens)  # committed tokens each has seen
    t, seconds, branched, n = 1, 0.0, 0, len(request.positions)
    while t < n:
        at, context = request.positions[t], request.num_prompt_tokens + t
        rows, accepted, depths = verify(at, policy(at), n - t - 1)
        longest = max((len(at.nodes[name][:d]) for name, d in depths.items()), default=0)
        branched += rows - 1 > longest  # more than one leaf
        for name, depth in depths.items():
            catchup = max(context - seen[name] - 1, 0) if name in seen else 0
            seconds += cost.draft_seconds(name, depth, 0, catchup)
            if name in seen:
                seen[name] = context + min(at.matched[name], depth)
        seconds += forward(cost, context, rows)
        t += accepted + 1
    return Outcome(seconds, branched)


def forward(cost: CostModel, context: int, rows: int) -> float:
    """The target's forward of ``rows``; past the measured rows along the last step (only a
    tree wider than any chain gets there)."""
    top = cost.max_tokens
    if rows <= top:
        return cost.forward_seconds(context, rows)
    last = cost.forward_seconds(context, top)
    return last + (rows - top) * (last - cost.forward_seconds(context, top - 1))


def hindsight_tree(request: Request, cost: CostModel, trees: Sequence[Tree]) -> float:
    """Per step the fastest of no draft and every tree in ``trees``, knowing what each will
    accept, no drafter paying to catch up (as `replay.hindsight` for chains): a shortest path
    over the output positions, solved backwards. With no trees: the target alone."""
    n, p = len(request.positions), request.num_prompt_tokens
    best = [0.0] * (n + 1)
    for t in range(n - 1, 0, -1):
        best[t] = cost.forward_seconds(p + t, 1) + best[t + 1]
        for tree in trees:
            rows, accepted, depths = verify(request.positions[t], tree, n - t - 1)
            draft = sum(cost.draft_seconds(name, d, 0, 0) for name, d in depths.items())
            seconds = draft + forward(cost, p + t, rows) + best[t + accepted + 1]
            best[t] = min(best[t], seconds)
    return best[1]


# ---------------------------------------------------------------- policies


def label(tree: Tree) -> str:
    return "+".join(f"{SHORT[name]}{d}" for name, d in tree)


def shapes(max_nodes: int, depths: Mapping[str, Iterable[int]] | None = None) -> Iterable[Tree]:
    """Every fixed tree of per-drafter depths (0: not run) with at most ``max_nodes`` draft
    tokens, over ``depths`` per drafter (0..8 by default)."""
    grid = [depths[n] if depths else range(9) for n in DRAFTERS]
    for combo in itertools.product(*grid):
        if 0 < sum(combo) <= max_nodes:
            yield tuple((n, d) for n, d in zip(DRAFTERS, combo, strict=True) if d)


def disagree(k: int) -> Policy:
    """Suffix's chain, plus the n-gram's where its first token differs (or suffix has none)."""

    def policy(at: Position) -> Tree:
        if at.first(NGRAM) is None or at.first(NGRAM) == at.first(SUFFIX):
            return ((SUFFIX, k),)
        return ((SUFFIX, k), (NGRAM, k))

    return policy


def fallback(model: str, k_lookup: int, k_model: int, tree: bool) -> Policy:
    """The lookups (suffix first; both with ``tree``) where one proposes, else ``model``."""

    def policy(at: Position) -> Tree:
        proposing = [n for n in LOOKUPS if at.first(n) is not None]
        if not proposing:
            return ((model, k_model),)
        return tuple((n, k_lookup) for n in (proposing if tree else proposing[:1]))

    return policy


@dataclass(frozen=True)
class Entry:
    """A policy of the study: ``chain`` or ``tree`` family, the rows it takes at most if its
    tree is fixed (0 if not), and whether the question names it (reported per category)."""

    family: str
    policy: Policy
    max_rows: int = 0
    named: bool = True


def named_policies() -> dict[str, Entry]:
    """Every fixed tree of up to 8 draft tokens, a coarser grid of wider ones (lookups 2, 4 or
    8 deep, models up to 8), lookups + a model's chain, the disagreement trees and the
    lookups-else-model fallbacks (a chain: the suffix's or else the n-gram's; a tree: both)."""
    grid = {n: (0, 1, 2, 3, 4, 6, 8) if n in MODELS else (0, 2, 4, 8) for n in DRAFTERS}
    every = set(shapes(8)) | set(shapes(32, grid))
    asked = {((d, k),) for d in DRAFTERS for k in range(1, 5)}
    for k, model, km in itertools.product((2, 3, 4), MODELS, range(1, 5)):
        asked |= {((SUFFIX, k), (NGRAM, k)), ((SUFFIX, k), (NGRAM, k), (model, km))}
    out: dict[str, Entry] = {}
    for tree in sorted(every | asked, key=lambda tr: (len(tr), sum(d for _, d in tr), tr)):
        family = "chain" if len(tree) == 1 else "tree"
        rows = 1 + sum(d for _, d in tree)
        out[f"fixed:{label(tree)}"] = Entry(family, lambda at, tr=tree: tr, rows, tree in asked)
    for k in (2, 3, 4, 6, 8):
        out[f"disagree:suffix{k}|ngram{k}"] = Entry("tree", disagree(k))
        for model, km in itertools.product(MODELS, range(1, 5)):
            chain, tree = fallback(model, k, km, False), fallback(model, k, km, True)
            out[f"fallback:suffix|ngram{k}|{SHORT[model]}{km}"] = Entry("chain", chain)
            out[f"fallback:lookups{k}|{SHORT[model]}{km}"] = Entry("tree", tree)
    return out


# ---------------------------------------------------------------- the study


def ratios(seconds: Mapping[str, float], target: Mapping[str, float], category: Mapping) -> dict:
    """Tokens/s over the target alone's on the same requests (the tokens are the same), per
    category and ``all``."""
    groups: dict[str, list[str]] = {"all": list(seconds)}
    for rid in seconds:
        groups.setdefault(category[rid], []).append(rid)
    return {
        c: round(sum(target[r] for r in ids) / sum(seconds[r] for r in ids), 3)
        for c, ids in sorted(groups.items())
    }


def held_out(runs: Mapping, names: Sequence[str], halves) -> tuple[dict[str, Outcome], list[str]]:
    """Each half scored under the policy of ``names`` fastest on the other half."""
    out, chosen = {}, []
    for train, test in (halves, halves[::-1]):
        best = min(names, key=lambda n: sum(runs[n][r].seconds for r in train))
        chosen.append(best)
        out |= {r: runs[best][r] for r in test}
    return out, chosen


def per_fold(run: Mapping[str, Outcome], target: Mapping[str, float], halves) -> list[float]:
    """The ratio over each half, in `held_out`'s order (the second half scored first)."""
    return [
        round(sum(target[r] for r in h) / sum(run[r].seconds for r in h), 3) for h in halves[::-1]
    ]


def study(steps: Sequence[StepRequest], cost: CostModel, budgets: Sequence[int]) -> dict:
    """Every policy replayed on every request; the held-out choices, the bounds."""
    requests = [to_request(s) for s in steps]
    entries = named_policies()
    runs = {
        name: {r.request_id: replay_request(r, e.policy, cost) for r in requests}
        for name, e in entries.items()
    }
    target = {r.request_id: hindsight_tree(r, cost, ()) for r in requests}
    category = {r.request_id: r.category for r in requests}

    def rate(run: Mapping[str, Outcome]) -> dict:
        return ratios({r: o.seconds for r, o in run.items()}, target, category)

    table = {name: rate(run) for name, run in runs.items()}
    families = {f: [n for n, e in entries.items() if e.family == f] for f in ("chain", "tree")}
    choices = {f"best fixed {f}": names for f, names in families.items()}
    for b in budgets:
        fits = [n for n, e in entries.items() if 0 < e.max_rows <= b]
        choices[f"fixed chain, <= {b} rows"] = [n for n in fits if entries[n].family == "chain"]
        choices[f"fixed tree or chain, <= {b} rows"] = fits
    halves = tuple([s.request_id for s in half] for half in folds(steps))
    chosen = {name: held_out(runs, names, halves) for name, names in choices.items()}
    tree, chain = chosen["best fixed tree"][0], chosen["best fixed chain"][0]
    saved = sum(o.seconds for o in chain.values()) - sum(o.seconds for o in tree.values())
    return {
        "policies": {n: row for n, row in table.items() if entries[n].named},
        "fixed_trees_all": {n: row["all"] for n, row in table.items() if not entries[n].named},
        "held_out": {
            n: {**rate(out), "chosen": picks, "per_fold": per_fold(out, target, halves)}
            for n, (out, picks) in chosen.items()
        },
        # the seconds a tree's mask and KV copy may add per branched step before it loses
        "tree_break_even_ms_per_branched_step": round(
            1000 * saved / max(sum(o.branched for o in tree.values()), 1), 3
        ),
        "bounds": bounds(steps, requests, cost, runs, families["chain"], target, category),
    }


def bounds(steps, requests, cost, runs, chains, target, category) -> dict:
    """Per-step hindsight (chains over every drafter or the lookups; trees of up to 4, 6, 8
    and 9 rows) and the per-request oracle (the fastest fixed policy per request)."""
    out = {}
    for name, drafters in (("every drafter", DRAFTERS), ("lookups", LOOKUPS)):
        result = hindsight([s.traced for s in steps], cost, drafters)
        out[f"hindsight chain, {name}"] = ratios(result.seconds, target, category)
    for b in (4, 6, 8, 9):
        trees = list(shapes(b - 1))
        seconds = {r.request_id: hindsight_tree(r, cost, trees) for r in requests}
        out[f"hindsight tree, <= {b} rows"] = ratios(seconds, target, category)
    for name, names in (("chains", chains), ("chains and trees", list(runs))):
        seconds = {r: min(runs[n][r].seconds for n in names) for r in target}
        out[f"per-request oracle, {name}"] = ratios(seconds, target, category)
    return out


def decision(report: dict) -> dict:
    """Best tree over best chain: held-out fixed policies, per-step hindsight (trees of up to
    9 rows: the longest chain the CPU table prices), per-request oracle."""
    held, bound = report["held_out"], report["bounds"]
    pairs = {
        "fixed, held out": ("best fixed tree", "best fixed chain"),
        "hindsight": ("hindsight tree, <= 9 rows", "hindsight chain, every drafter"),
        "per-request oracle": (
            "per-request oracle, chains and trees",
            "per-request oracle, chains",
        ),
    }
    out = {}
    for name, keys in pairs.items():
        tree, chain = ((held | bound)[k]["all"] for k in keys)
        out[name] = {"tree": tree, "chain": chain, "gain": round(tree / chain - 1, 3)}
    return out


def markdown(name: str, report: dict) -> str:
    rows = {n: r for n, r in report["policies"].items() if not n.startswith("fallback")}
    rows |= {f"held-out {k}": v for k, v in report["held_out"].items()} | report["bounds"]
    categories = [c for c in next(iter(rows.values())) if c != "all"]
    lines = [f"### {name}", "", "| policy | " + " | ".join(categories) + " | all |"]
    lines.append("|---|" + "---:|" * (len(categories) + 1))
    for n, row in rows.items():
        cells = " | ".join(f"{row[c]:.2f}" for c in categories)
        lines.append(f"| {n} | {cells} | {row['all']:.3f} |")
    lines += ["", "| tree vs chain | tree | chain | gain |", "|---|---:|---:|---:|"]
    for k, v in report["decision"].items():
        lines.append(f"| {k} | {v['tree']:.3f} | {v['chain']:.3f} | {100 * v['gain']:+.1f}% |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="tree_replay", description=__doc__.split("\n")[0])
    p.add_argument("traces", type=Path, nargs="+", help="step recordings; the first's costs")
    p.add_argument("--out", type=Path, default=None, help="JSON report")
    args = p.parse_args(argv)
    steps = load(args.traces)
    recorded = json.loads(args.traces[0].read_text())["cost"]
    report: dict = {
        "command": f"{COMMAND} {' '.join(map(str, args.traces))}",
        "requests": len(steps),
        "output_tokens": sum(s.traced.num_output_tokens for s in steps),
        "ratio": "decode tokens/s over the target alone's on the same requests",
    }
    for name, cost in (("cpu", cpu_costs(recorded)), ("gpu", gpu_costs())):
        result = study(steps, cost, BUDGETS[name])
        result["decision"] = decision(result)
        report[name] = {"cost": cost.to_json(), **result}
        print(markdown(name, result), "\n")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

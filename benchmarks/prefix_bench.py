"""Prefix caching served: the default server with caching on against the same with it off.

Reproduce (from the repository root; ~20 minutes on 2 cores)::

    .venv/bin/python benchmarks/prefix_bench.py --out benchmarks/results/prefix_cache.json

Starts two ``spinserve serve`` processes on the default model set (Qwen2.5-Coder-1.5B and its
drafters), one with ``--no-prefix-caching``, and runs each workload on both, alternating
which goes first item by item so that only one server computes at a time:

- ``multi-turn``: MT-Bench's two-turn questions from the shipped Spec-Bench dev split (a
  sample across its categories); turn 2 resends turn 1 and its answer, as chat clients do.
  Time to first token of each turn, and the whole conversation's time.
- ``shared-doc``: a document of about ``--doc-tokens`` tokens (Spec-Bench RAG passages
  joined) and ``--questions`` questions on it, one after another, then (on another document)
  ``--concurrency`` at a time. Total time.
- ``no-sharing``: single-turn Spec-Bench prompts of other categories, nothing shared but the
  chat template's first tokens: what caching costs where it cannot help.

Every request is greedy and streamed and names its drafter (``--drafter``, the suffix lookup by
default): the servers' `spin` policies learn from what they see, and caching changes what
they see (a cached prefix makes a model drafter's catch-up cheap), so with ``spin`` choosing
the two servers drift apart in drafter choices and the comparison measures the drift, not the
cache. ``no-sharing`` also runs with the server's own policy (``default``), first, while both
servers are fresh. The outputs of the two servers are compared text for text. Results: per
workload and server, times, and the ratios (on / off).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from peers_manifest import cpu
from serve_memory import served_model, wait_healthy

from spinserve.bench.client import Endpoint, RequestRecord, Sampling, make_client, send
from spinserve.bench.datasets import BenchPrompt

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC_BENCH = REPO_ROOT / "spinserve" / "bench" / "data" / "spec_bench" / "question_dev.jsonl"
SERVERS = {"on": [], "off": ["--no-prefix-caching"]}
QUESTIONS = [
    "Summarize the first passage in two sentences.",
    "What does the text say about costs or prices?",
    "List three facts from the last passage.",
    "Which passage is the most technical, and why?",
    "Give the text a short title.",
    "What is one claim in the text that a skeptic might question?",
    "Explain the main idea of the second passage to a child.",
    "Which numbers appear in the text, and what do they measure?",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="results JSON")
    p.add_argument("--ports", type=int, nargs=2, default=(8311, 8312), help="on, off")
    p.add_argument("--model", default=None, help="spinserve serve --model (default: its own)")
    p.add_argument("--conversations", type=int, default=8, help="multi-turn sample size")
    p.add_argument("--doc-tokens", type=int, default=2000, help="shared document's length")
    p.add_argument("--questions", type=int, default=8, help="questions per document")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--mix", type=int, default=8, help="no-sharing prompts")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--turn-tokens", type=int, default=192, help="max_tokens of a multi-turn answer")
    p.add_argument("--drafter", default="suffix", help="every request's drafter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve-arg", action="append", default=[], help="extra serve flag")
    return p.parse_args(argv)


def spec_bench() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SPEC_BENCH.read_text().splitlines() if line.strip()]


def conversations(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    two_turn = [r for r in rows if len(r["turns"]) == 2]
    by_category: dict[str, list[dict]] = {}
    for r in two_turn:
        by_category.setdefault(r["category"], []).append(r)
    picked: list[dict] = []
    while len(picked) < n and any(by_category.values()):
        for rows_of in by_category.values():
            if rows_of and len(picked) < n:
                picked.append(rows_of.pop(rng.randrange(len(rows_of))))
    return picked


def documents(rows: list[dict], num_tokens: int, count: int) -> list[str]:
    """``count`` documents of about ``num_tokens`` tokens (4 characters a token) each, from
    distinct RAG passages (each prompt's last line, its question, dropped)."""
    passages = [r["turns"][0].rsplit("\n", 1)[0] for r in rows if r["category"] == "rag"]
    docs: list[str] = []
    for _ in range(count):
        parts: list[str] = []
        while sum(map(len, parts)) < 4 * num_tokens:
            parts.append(passages.pop(0))
        docs.append("\n\n".join(parts)[: 4 * num_tokens])
    return docs


class Bench:
    def __init__(self, args: argparse.Namespace, models: dict[str, str]) -> None:
        self.args = args
        self.endpoints = {
            name: Endpoint(
                name,
                f"http://127.0.0.1:{port}/v1",
                models[name],
                extra_body={"drafter": args.drafter},
            )
            for name, port in zip(SERVERS, args.ports, strict=True)
        }
        self.clients = {n: make_client(e, 600.0) for n, e in self.endpoints.items()}
        self.flip = False

    def order(self) -> list[str]:
        """Alternate which server goes first, item by item."""
        self.flip = not self.flip
        return ["on", "off"] if self.flip else ["off", "on"]

    async def one(
        self,
        server: str,
        messages: list[dict],
        label: str,
        policy: bool = False,
        max_tokens: int | None = None,
    ) -> RequestRecord:
        """One streamed request; ``policy``: let the server's policy choose the drafter."""
        prompt = BenchPrompt(label, label, "", tuple(messages))
        record = RequestRecord(server, 0, label, label, "1")
        endpoint = self.endpoints[server]
        if policy:
            endpoint = Endpoint(endpoint.name, endpoint.base_url, endpoint.model)
        sampling = Sampling(max_tokens=max_tokens or self.args.max_tokens)
        return await send(self.clients[server], endpoint, prompt, sampling, record)

    async def multi_turn(self, rows: list[dict]) -> dict[str, Any]:
        out: dict[str, list] = {"on": [], "off": []}
        for row in rows:
            for server in self.order():
                start = time.monotonic()
                messages = [{"role": "user", "content": row["turns"][0]}]
                n = self.args.turn_tokens
                first = await self.one(server, messages, "turn1", max_tokens=n)
                messages += [
                    {"role": "assistant", "content": first.text},
                    {"role": "user", "content": row["turns"][1]},
                ]
                second = await self.one(server, messages, "turn2", max_tokens=n)
                out[server].append(
                    {
                        "id": row["question_id"],
                        "category": row["category"],
                        "turn1": _record(first),
                        "turn2": _record(second),
                        "seconds": time.monotonic() - start,
                    }
                )
                seconds = out[server][-1]["seconds"]
                _log(f"multi-turn {row['question_id']} {server}: {seconds:.1f} s")
        return out

    async def shared_doc(self, doc: str, concurrency: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        questions = QUESTIONS[: self.args.questions]
        for server in self.order():
            gate = asyncio.Semaphore(concurrency)

            async def ask(q: str, server: str = server, gate=gate) -> RequestRecord:
                async with gate:
                    return await self.one(server, [{"role": "user", "content": f"{doc}\n\n{q}"}], q)

            start = time.monotonic()
            records = await asyncio.gather(*(ask(q) for q in questions))
            out[server] = {
                "seconds": time.monotonic() - start,
                "requests": [_record(r) for r in records],
            }
            _log(f"shared-doc x{concurrency} {server}: {out[server]['seconds']:.1f} s")
        return out

    async def no_sharing(self, rows: list[dict], policy: bool) -> dict[str, Any]:
        out: dict[str, list] = {"on": [], "off": []}
        for row in rows:
            for server in self.order():
                messages = [{"role": "user", "content": row["turns"][0]}]
                record = await self.one(server, messages, row["category"], policy)
                out[server].append(_record(record))
        _log(f"no-sharing ({'default' if policy else 'pinned'}) done")
        return out


def _record(r: RequestRecord) -> dict[str, Any]:
    if r.error:
        raise SystemExit(f"a request failed: {r.error}")
    return {
        "ttft": r.ttft,
        "e2e": r.e2e,
        "prompt_tokens": r.num_prompt_tokens,
        "output_tokens": r.num_output_tokens,
        "text": r.text,
    }


def _log(message: str) -> None:
    print(f"[prefix_bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios on / off for each goal, and whether every output matched."""
    mt = results["multi_turn"]
    ttft2 = {s: statistics.median(c["turn2"]["ttft"] for c in mt[s]) for s in SERVERS}
    mt_seconds = {s: sum(c["seconds"] for c in mt[s]) for s in SERVERS}
    mt_tokens = {
        s: sum(c["turn1"]["output_tokens"] + c["turn2"]["output_tokens"] for c in mt[s])
        for s in SERVERS
    }
    doc = {k: {s: v[s]["seconds"] for s in SERVERS} for k, v in results["shared_doc"].items()}
    mixes = {
        k: {s: sum(r["e2e"] for r in v[s]) for s in SERVERS}
        for k, v in results["no_sharing"].items()
    }
    texts = {
        s: [c[t]["text"] for c in mt[s] for t in ("turn1", "turn2")]
        + [r["text"] for v in results["shared_doc"].values() for r in v[s]["requests"]]
        + [r["text"] for v in results["no_sharing"].values() for r in v[s]]
        for s in SERVERS
    }
    same = sum(a == b for a, b in zip(texts["on"], texts["off"], strict=True))
    return {
        "multi_turn": {
            "turn2_ttft_p50_s": ttft2,
            "turn2_ttft_ratio": ttft2["on"] / ttft2["off"],
            "seconds": mt_seconds,
            "tokens_per_s": {s: mt_tokens[s] / mt_seconds[s] for s in SERVERS},
            "throughput_ratio": (mt_tokens["on"] / mt_seconds["on"])
            / (mt_tokens["off"] / mt_seconds["off"]),
        },
        "shared_doc": {k: {"seconds": v, "ratio": v["on"] / v["off"]} for k, v in doc.items()},
        "no_sharing": {k: {"seconds": v, "ratio": v["on"] / v["off"]} for k, v in mixes.items()},
        "outputs_identical": f"{same}/{len(texts['on'])}",
    }


async def run(args: argparse.Namespace, models: dict[str, str]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    rows = spec_bench()
    bench = Bench(args, models)
    await bench.one("on", [{"role": "user", "content": "Hi"}], "warm-up")
    await bench.one("off", [{"role": "user", "content": "Hi"}], "warm-up")
    docs = documents(rows, args.doc_tokens, 2)
    others = [r for r in rows if len(r["turns"]) == 1 and r["category"] != "rag"]
    mix = rng.sample(others, 2 * args.mix)  # two disjoint samples: nothing seen twice
    no_sharing = {  # first, while neither server's policy has learned anything
        "default": await bench.no_sharing(mix[: args.mix], policy=True),
        args.drafter: await bench.no_sharing(mix[args.mix :], policy=False),
    }
    results = {
        "no_sharing": no_sharing,
        "multi_turn": await bench.multi_turn(conversations(rows, args.conversations, rng)),
        "shared_doc": {
            "sequential": await bench.shared_doc(docs[0], 1),
            f"concurrency={args.concurrency}": await bench.shared_doc(docs[1], args.concurrency),
        },
    }
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for (name, flags), port in zip(SERVERS.items(), args.ports, strict=True):
            cmd = [sys.executable, "-m", "spinserve.cli.main", "serve", "--port", str(port)]
            cmd += (["--model", args.model] if args.model else []) + flags + args.serve_arg
            log = open(args.out.with_suffix(f".{name}.log"), "w")  # noqa: SIM115
            procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=log))
        for proc, port in zip(procs, args.ports, strict=True):
            wait_healthy(port, proc, 900)
        models = {name: served_model(port) for name, port in zip(SERVERS, args.ports, strict=True)}
        results = asyncio.run(run(args, models))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
    report = {
        "command": " ".join([".venv/bin/python", "benchmarks/prefix_bench.py", *sys.argv[1:]]),
        "machine": cpu(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "summary": summarize(results),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()

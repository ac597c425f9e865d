"""One server against a fleet of 1 and 2 replicas on Ray Serve, on this machine.

Reproduce (from the repository root; ~5 minutes on 2 cores)::

    .venv/bin/python benchmarks/ray_bench.py --out benchmarks/results/fleet.json

Starts a Ray head on this machine (``ray start --head``, 2 CPUs), then, one at a time:
``spinserve serve`` alone with 2 engine threads (``single``), and ``spinserve serve
--ray-address`` with 1 replica of 2 threads (``fleet-1``) and 2 replicas of 1 thread each
(``fleet-2``), all on SmolLM2-135M-Instruct with its default drafters. Each gets the same
Spec-Bench prompts, greedy, streamed, 64 output tokens each (``ignore_eos``), at concurrency
1, 2, 4 and 8; outputs are compared text for text with ``single``'s. On 2 cores two replicas
share the cores one server already uses, so the point is what the fleet costs: the ingress's
added latency per request (``max_tokens`` 1, one at a time) and per streamed token (the
inter-token latency at concurrency 1), fleet-1 against single.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
MODEL = "smollm2-135m-instruct"
RAY_PORT = 6391
CONFIGS = {
    "single": ["--num-threads", "2"],
    "fleet-1": ["--ray-address", f"127.0.0.1:{RAY_PORT}", "--replicas", "1", "--num-threads", "2"],
    "fleet-2": ["--ray-address", f"127.0.0.1:{RAY_PORT}", "--replicas", "2", "--num-threads", "1"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="results JSON")
    p.add_argument("--port", type=int, default=8321)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--requests", type=int, default=8, help="per level (at least 2x its level)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--probes", type=int, default=16, help="max_tokens=1 requests, one at a time")
    return p.parse_args(argv)


def prompts(n: int) -> list[BenchPrompt]:
    rows = [json.loads(line) for line in SPEC_BENCH.read_text().splitlines() if line.strip()]
    return [
        BenchPrompt.user(str(row["question_id"]), row["category"], row["turns"][0])
        for row in rows[:n]
    ]


async def level(endpoint: Endpoint, sample: list[BenchPrompt], c: int, max_tokens: int) -> dict:
    """``sample`` sent ``c`` at a time; tokens/s over the wall time, latencies per request."""
    sampling = Sampling(max_tokens=max_tokens)
    client = make_client(endpoint, 600)
    gate = asyncio.Semaphore(c)

    async def one(i: int, prompt: BenchPrompt) -> RequestRecord:
        async with gate:
            record = RequestRecord(endpoint.name, i, prompt.prompt_id, prompt.category, f"c{c}")
            return await send(client, endpoint, prompt, sampling, record)

    start = time.monotonic()
    records = await asyncio.gather(*(one(i, p) for i, p in enumerate(sample)))
    wall = time.monotonic() - start
    await client.close()
    failed = [r.error for r in records if not r.ok]
    if failed:
        raise SystemExit(f"{endpoint.name} c={c}: {failed[0]}")
    itl = [x for r in records for x in r.itl]
    return {
        "concurrency": c,
        "requests": len(records),
        "output_tokens": sum(r.num_output_tokens for r in records),
        "tokens_per_s": sum(r.num_output_tokens for r in records) / wall,
        "ttft_p50_s": statistics.median(r.ttft for r in records),
        "itl_p50_s": statistics.median(itl),
        "e2e_p50_s": statistics.median(r.e2e for r in records),
        "texts": [r.text for r in records],
    }


async def probe(endpoint: Endpoint, prompt: BenchPrompt, n: int) -> float:
    """Median latency of a one-token request, one at a time: mostly the path, not the model."""
    sampling = Sampling(max_tokens=1)
    client = make_client(endpoint, 60)
    times = []
    for i in range(n + 2):
        record = await send(client, endpoint, prompt, sampling, RequestRecord("p", i, "", "", ""))
        if i >= 2:  # two warm-ups
            times.append(record.e2e)
    await client.close()
    return statistics.median(times)


async def measure(args: argparse.Namespace, name: str) -> dict:
    model = served_model(args.port)
    url = f"http://127.0.0.1:{args.port}/v1"
    endpoint = Endpoint(name, url, model, extra_body={"ignore_eos": True})
    sample = prompts(max(args.requests, 2 * max(args.concurrency)))
    await level(endpoint, sample[:2], 2, 8)  # warm-up
    levels = []
    for c in args.concurrency:
        n = max(args.requests, 2 * c)
        levels.append(await level(endpoint, sample[:n], c, args.max_tokens))
    return {"levels": levels, "probe_latency_s": await probe(endpoint, sample[0], args.probes)}


# Ray's token authentication, on for the head and its clients alike (the token is the one
# `ray start` keeps in ~/.ray/auth_token).
RAY_ENV = os.environ | {"RAY_AUTH_MODE": "token"}


def run_config(args: argparse.Namespace, name: str, log: Path) -> dict:
    cmd = [
        ".venv/bin/spinserve", "serve", "--model", MODEL, "--port", str(args.port),
        "--log-level", "warning", *CONFIGS[name],
    ]  # fmt: skip
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=out, env=RAY_ENV)
        try:
            wait_healthy(args.port, proc, 600)
            return asyncio.run(measure(args, name))
        finally:
            proc.terminate()
            proc.wait(timeout=120)


def summary(results: dict[str, dict]) -> dict[str, Any]:
    single, fleet1 = results["single"], results["fleet-1"]
    same = {
        name: sum(
            a == b
            for lv, base in zip(r["levels"], single["levels"], strict=True)
            for a, b in zip(lv["texts"], base["texts"], strict=True)
        )
        for name, r in results.items()
    }
    total = sum(len(lv["texts"]) for lv in single["levels"])
    return {
        "added_latency_per_request_s": fleet1["probe_latency_s"] - single["probe_latency_s"],
        "added_latency_per_token_s": fleet1["levels"][0]["itl_p50_s"]
        - single["levels"][0]["itl_p50_s"],
        "outputs_identical": {name: f"{n}/{total}" for name, n in same.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_at_start = os.getloadavg()[0]  # above ~1, something else shares the 2 cores
    log = args.out.with_suffix(".log")
    log.write_text("")
    ray = [str(REPO_ROOT / ".venv/bin/ray")]
    subprocess.run(
        [*ray, "start", "--head", "--port", str(RAY_PORT), "--num-cpus", "2",
         "--include-dashboard", "false",
         "--object-store-memory", str(200 * 1024 * 1024)],
        check=True, stdout=subprocess.DEVNULL, env=RAY_ENV,
    )  # fmt: skip
    try:
        results = {name: run_config(args, name, log) for name in CONFIGS}
    finally:
        subprocess.run([*ray, "stop"], check=False, stdout=subprocess.DEVNULL, env=RAY_ENV)
    report = {
        "command": " ".join([".venv/bin/python", "benchmarks/ray_bench.py", *sys.argv[1:]]),
        "machine": cpu(),
        "load_average_at_start": round(load_at_start, 2),
        "model": MODEL,
        "max_tokens": args.max_tokens,
        "sample": "Spec-Bench dev split (shipped), first turns in file order, "
        f"{args.requests} or 2x concurrency requests per level",
        "summary": summary(results),
        "configs": {
            name: {"levels": [{k: v for k, v in lv.items() if k != "texts"} for lv in r["levels"]],
                   "probe_latency_s": r["probe_latency_s"]}
            for name, r in results.items()
        },
    }  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

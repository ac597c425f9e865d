"""Where a served step's time goes: the target's forward against everything around it.

Reproduce (from the repository root; ~3 minutes on 2 cores)::

    .venv/bin/python benchmarks/step_overhead.py --out benchmarks/results/step_overhead.json

Serves the default target (Qwen2.5-Coder-1.5B, its default drafters loaded) in this process
through the real HTTP server and the official ``openai`` client, and times every iteration of
the engine thread that ran a step, split into: the forward (``runner.execute``), verification
(the rest of ``_execute_and_verify``), the drafters' proposals (``speculator.propose``),
scheduling, the scheduler's and the policy's bookkeeping after the step, committing outputs
(detokenizing, stops), and the server's own part (updates to the event loop, metrics).
Greedy streamed requests of ``--max-tokens`` tokens, one at a time and ``--concurrency`` at
once, each with no drafter and with the server's policy (``spin``). The figure of merit
is a served decode step's time over its forward's (the aim: at most 1.05).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
from peers_manifest import cpu

from spinserve.config.engine import EngineConfig
from spinserve.config.speculative import SpeculativeConfig
from spinserve.engine.builder import build_engine
from spinserve.loading import zoo
from spinserve.loading.loader import load
from spinserve.server.app import build_app
from spinserve.server.config import ServerConfig
from spinserve.server.engine_loop import EngineLoop
from spinserve.server.http_server import make_server

PROMPTS = [
    "Write a Python function that merges two sorted lists.",
    "Explain what a hash table is in three sentences.",
    "Translate 'where is the train station' into French and German.",
    "List five uses of a paperclip.",
    "Write a haiku about autumn rain.",
    "What is the difference between TCP and UDP?",
    "Write a SQL query that counts orders per customer.",
    "Summarize the water cycle for a child.",
]
PARTS = ("forward", "verify", "propose", "schedule", "update", "observe", "commit", "server")


class Clock:
    """Seconds per part, summed over the engine-thread iterations that ran a step."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self.iterations = 0
        self.total = 0.0
        self.steps = 0  # engine steps so far, enabled or not
        self.enabled = False

    def wrap(self, owner: Any, name: str, part: str) -> None:
        inner: Callable = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                if self.enabled:
                    self.parts[part] += time.perf_counter() - start

        setattr(owner, name, timed)

    def count_steps(self, engine: Any) -> None:
        inner = engine.step

        def counted() -> Any:
            self.steps += 1
            return inner()

        engine.step = counted

    def reset(self) -> None:
        self.parts.clear()
        self.iterations, self.total = 0, 0.0

    def summary(self) -> dict[str, Any]:
        p = dict(self.parts)
        step = p.pop("step", 0.0)
        exec_verify = p.pop("execute_and_verify", 0.0)
        out = {
            "forward": p.get("forward", 0.0),
            "verify": exec_verify - p.get("forward", 0.0),
            "propose": p.get("propose", 0.0),
            "schedule": p.get("schedule", 0.0),
            "update": p.get("update", 0.0),
            "observe": p.get("observe", 0.0),
        }
        out["commit"] = step - sum(out.values())
        out["server"] = self.total - step
        return {
            "iterations": self.iterations,
            "seconds": self.total,
            "parts_s": out,
            "per_iteration_ms": {k: 1000 * v / max(1, self.iterations) for k, v in out.items()},
            "served_over_forward": self.total / out["forward"] if out["forward"] else None,
        }


def instrument(clock: Clock, engine: Any) -> None:
    clock.wrap(engine.runner, "execute", "forward")
    clock.wrap(engine, "_execute_and_verify", "execute_and_verify")
    clock.wrap(engine.speculator, "propose", "propose")
    clock.wrap(engine.scheduler, "schedule", "schedule")
    clock.wrap(engine.scheduler, "update", "update")
    clock.wrap(engine.speculator, "observe", "observe")
    clock.wrap(engine, "step", "step")
    clock.count_steps(engine)
    serve_once = EngineLoop._serve_once

    def timed(loop: EngineLoop) -> bool:
        steps = clock.steps
        start = time.perf_counter()
        result = serve_once(loop)
        if clock.enabled and clock.steps > steps:  # an iteration that ran a step
            clock.iterations += 1
            clock.total += time.perf_counter() - start
        return result

    EngineLoop._serve_once = timed  # type: ignore[method-assign]


async def run_load(url: str, model: str, concurrency: int, drafter: str | None, n: int) -> None:
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
    async with client:
        await _load(client, model, concurrency, drafter, n)


async def _load(
    client: openai.AsyncOpenAI, model: str, concurrency: int, drafter: str | None, n: int
) -> None:
    gate = asyncio.Semaphore(concurrency)
    extra = {"drafter": drafter} if drafter else {}

    async def one(prompt: str) -> None:
        async with gate:
            stream = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=n,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True, **extra},
            )
            async for _ in stream:
                pass

    await asyncio.gather(*(one(p) for p in PROMPTS[: max(concurrency, 4)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    loaded = load(zoo.DEFAULT_TARGET)
    drafters = tuple(zoo.default_drafters(zoo.DEFAULT_TARGET))
    engine = build_engine(loaded, EngineConfig(speculative=SpeculativeConfig(drafters=drafters)))
    clock = Clock()
    instrument(clock, engine)
    config = ServerConfig(log_level="warning")
    app = build_app(engine, zoo.DEFAULT_TARGET, config)
    server = make_server(app, config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.1)
    results: dict[str, Any] = {}
    try:
        asyncio.run(run_load(url, zoo.DEFAULT_TARGET, 1, "none", 4))  # warm-up
        for drafter in ("none", None):
            for concurrency in (1, args.concurrency):
                clock.reset()
                clock.enabled = True
                asyncio.run(
                    run_load(url, zoo.DEFAULT_TARGET, concurrency, drafter, args.max_tokens)
                )
                clock.enabled = False
                key = f"{drafter or 'spin'}@{concurrency}"
                results[key] = clock.summary()
                print(key, json.dumps(results[key]["per_iteration_ms"]), flush=True)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        with contextlib.suppress(Exception):
            engine.close()
    report = {
        "command": ".venv/bin/python benchmarks/step_overhead.py --out " + str(args.out),
        "machine": cpu(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"concurrency": args.concurrency, "max_tokens": args.max_tokens},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Peak resident memory of `spinserve serve` with its default model set, under load.

Reproduce (from the repository root; ~3 minutes)::

    .venv/bin/python benchmarks/serve_memory.py --port 8765 --requests 8 \\
        --out results/serve_memory.json

Starts ``spinserve serve`` with no model flags: the default target (Qwen2.5-Coder-1.5B) with
its default drafters (Qwen2.5-Coder-0.5B, SmolLM2-135M, ngram, suffix) and default weights
(``auto``: the int4 CPU path); waits for /health, sends ``--requests`` concurrent chat
completions of 32 tokens (so every drafter and the KV pool are touched), then reads the
server's peak resident set (``VmHWM`` of /proc/<pid>/status; file-backed pages of memory-mapped
weights count when touched) and its current ``VmRSS``, and stops it with SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "Write a Python function that reverses a linked list.",
    "What is the capital of Australia?",
    "Summarize the causes of the French Revolution in three sentences.",
    "Translate 'the weather is nice today' into Spanish.",
]


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def served_model(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as resp:
        return json.loads(resp.read())["data"][0]["id"]


def post(port: int, model: str, question: str) -> dict:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 32,
            "temperature": 0,
        }
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        body,
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def wait_healthy(port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"server not healthy after {timeout_s:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "serve_memory.json")
    args = p.parse_args()
    cmd = [sys.executable, "-m", "spinserve.cli.main", "serve", "--port", str(args.port)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    try:
        wait_healthy(args.port, proc, 900)
        ready_s = time.perf_counter() - start
        rss_ready = status_kib(proc.pid, "VmRSS")
        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.requests)]
        with ThreadPoolExecutor(args.requests) as pool:
            model = served_model(args.port)
            replies = list(pool.map(lambda q: post(args.port, model, q), questions))
        tokens = sum(r["usage"]["completion_tokens"] for r in replies)
        result = {
            "command": " ".join(cmd),
            "ready_seconds": ready_s,
            "requests": args.requests,
            "completion_tokens": tokens,
            "rss_after_load_gib": rss_ready / 2**20,
            "peak_rss_gib": status_kib(proc.pid, "VmHWM") / 2**20,
            "rss_after_requests_gib": status_kib(proc.pid, "VmRSS") / 2**20,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

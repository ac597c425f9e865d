"""Graceful shutdown: stop admitting (503), let running requests finish within the timeout,
abort the rest with a clean end of their streams, exit 0."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import pytest
from conftest import MODEL, running_server, tiny_engine

REQUEST = {"model": MODEL, "prompt": "Once upon a time", "ignore_eos": True, "temperature": 0}


def read_stream(url: str, body: dict, first_chunk: threading.Event, events: list) -> None:
    with httpx2.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                first_chunk.set()


def start_stream(url: str, body: dict) -> tuple[threading.Thread, list[str]]:
    events: list[str] = []
    first = threading.Event()
    thread = threading.Thread(target=read_stream, args=(url, body, first, events), daemon=True)
    thread.start()
    assert first.wait(30), "no first chunk"
    return thread, events


def finish_reasons(events: list[str]) -> list[str]:
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]


def wait_draining(url: str) -> httpx2.Response:
    """The first 503 of /health."""
    deadline = time.monotonic() + 10
    while (health := httpx2.get(url + "/health")).status_code != 503:
        assert time.monotonic() < deadline, "the server never started draining"
        time.sleep(0.01)
    return health


@pytest.fixture
def slow_engine(tiny_loaded):
    """An engine whose steps take at least 10 ms, so requests outlive the test's moves."""
    engine = tiny_engine(tiny_loaded["llama"])
    step = engine.step

    def slow_step():
        time.sleep(0.01)
        return step()

    engine.step = slow_step
    return engine


def test_running_requests_finish_new_ones_get_503(slow_engine):
    with running_server(slow_engine, shutdown_timeout=30) as server:
        thread, events = start_stream(server.url, REQUEST | {"max_tokens": 60, "stream": True})
        server.server.should_exit = True
        health = wait_draining(server.url)
        assert health.headers["retry-after"] and health.json()["error"]["code"] == "shutting_down"
        refused = server.post("/v1/completions", json=REQUEST | {"max_tokens": 2})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "shutting_down"
        assert refused.headers["retry-after"]
        thread.join(30)
    assert events[-1] == "[DONE]"
    assert finish_reasons(events) == ["length"]
    assert sum(len(json.loads(e)["choices"][0]["text"]) > 0 for e in events[:-2]) > 0


def test_requests_past_the_timeout_are_aborted_cleanly(slow_engine):
    with running_server(slow_engine, shutdown_timeout=0.3) as server:
        thread, events = start_stream(server.url, REQUEST | {"max_tokens": 400, "stream": True})
        started = time.monotonic()
        server.server.should_exit = True
    assert time.monotonic() - started < 10
    thread.join(10)
    assert events[-1] == "[DONE]"
    assert finish_reasons(events) == ["abort"]


@pytest.fixture
def long_context_folder(tiny_folders, tmp_path) -> Path:
    """The tiny llama with a 4096-token context: room for a request that takes seconds."""
    folder = tmp_path / "llama-4k"
    shutil.copytree(tiny_folders["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 4096
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_sigterm_drains_and_exits_0(long_context_folder):
    """The real command in a subprocess: SIGTERM during a long stream."""
    command = [sys.executable, "-m", "spinserve.cli.main", "serve"]
    flags = ["--model", str(long_context_folder), "--served-model-name", MODEL, "--port", "0"]
    proc = subprocess.Popen(
        [*command, *flags, "--shutdown-timeout", "1", "--drafter", "ngram"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log: list[str] = []
    try:
        url = _wait_for_url(proc, log)
        reader = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)
        reader.start()
        thread, events = start_stream(url, REQUEST | {"max_tokens": 4000, "stream": True})
        proc.send_signal(signal.SIGTERM)
        try:
            wait_draining(url)
            status = httpx2.post(
                url + "/v1/completions", json=REQUEST | {"max_tokens": 2}
            ).status_code
            assert status == 503
        except httpx2.ConnectError:
            pass  # already closed: refused is fine too
        assert proc.wait(timeout=30) == 0, "".join(log)
        thread.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert events[-1] == "[DONE]"
    assert finish_reasons(events) == ["abort"]
    text = "".join(log)
    assert "draining" in text and re.search(r"cmpl-\w+-0 aborted", text), text


def _wait_for_url(proc: subprocess.Popen, log: list[str]) -> str:
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        log.append(line)
        found = re.search(r"Uvicorn running on (http://[\d.]+:\d+)", line)
        if found:
            return found.group(1)
        assert time.monotonic() < deadline, "".join(log)
    raise AssertionError("the server exited:\n" + "".join(log))

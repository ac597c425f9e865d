"""Failures of the endpoint against a stub: one clear line each, partial results kept, a
non-zero exit only when every request failed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from spinserve.cli.main import main


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"prompt number {i} says hello", "category": "c"} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench(url: str, dataset: str, *args: str) -> int:
    return main(["bench", "serve", "--base-url", url, "--dataset", dataset, *args])


@pytest.mark.parametrize(
    "mode, says",
    [
        ("error", "HTTP 500: stub failure"),
        ("garbage", "garbled stream: a chunk is not JSON"),
        ("plain", "the response held no stream chunks"),
    ],
)
def test_every_request_failing_is_named_and_exits_1(stub, dataset, tmp_path, capsys, mode, says):
    out = tmp_path / "out.json"
    assert bench(stub.url(mode), dataset, "--no-warmup", "--out", str(out)) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if says in line]
    assert len(lines) == 4
    assert all(line.startswith("default concurrency=1 prompt") for line in lines)
    (run,) = json.loads(out.read_text())["runs"]
    assert all(says in r["error"] for r in run["requests"])


def test_some_failures_keep_the_rest(stub, dataset, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert bench(stub.url("flaky"), dataset, "--no-warmup", "--out", str(out)) == 0
    assert capsys.readouterr().err.count("HTTP 500") == 2
    (run,) = json.loads(out.read_text())["runs"]
    ok = [r for r in run["requests"] if r["error"] is None]
    assert len(ok) == 2
    # The stub echoes the prompt's five words, one per chunk, and reports them as its usage.
    assert all(r["text"].startswith("prompt number") for r in ok)
    assert all(r["num_output_tokens"] == 5 and len(r["itl"]) == 4 for r in ok)


def test_an_endpoint_that_is_down(dataset, tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    out = tmp_path / "out.json"
    assert bench(url, dataset, "--model", "m", "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "warm-up failed: cannot connect" in err and err.count("Connect") >= 4
    assert len(json.loads(out.read_text())["runs"][0]["requests"]) == 4
    assert bench(url, dataset) == 2  # no --model: nothing to ask GET /v1/models
    assert "cannot list models (cannot connect" in capsys.readouterr().err


def test_the_command_prints_one_line_not_a_traceback(dataset):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    cmd = [sys.executable, "-m", "spinserve.cli.main", "bench", "serve", "--base-url", url]
    done = subprocess.run([*cmd, "--dataset", dataset], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "args, says",
    [
        (["--compare", "nourl"], "expected NAME=URL"),
        (["--compare", "a=http://x/v1,drafter"], "'drafter' is not key=value"),
        (["--concurrency", "1,x"], "expected numbers like 1,4,8"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
    ],
)
def test_bad_flags_are_named(stub, dataset, capsys, args, says):
    assert bench(stub.url("echo"), dataset, "--model", "m", *args) == 2
    assert says in capsys.readouterr().err

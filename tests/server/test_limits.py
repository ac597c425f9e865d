"""What a hostile client cannot make the server do: read a body past the limit, tokenize a
prompt longer than the context could hold, hold up short requests behind a huge one, or
keep memory after a big request."""

from __future__ import annotations

import socket
import threading
import time

import openai
import pytest
from conftest import MODEL, running_server, tiny_engine

from spinserve.server.limits import MAX_CHARS_PER_TOKEN

CONTEXT = 64
LIMIT = 64 * 1024  # the small server's max_request_bytes
OK = {"model": MODEL, "prompt": "hi", "max_tokens": 2}


@pytest.fixture(scope="module")
def small(tiny_loaded):
    engine = tiny_engine(tiny_loaded["llama"], max_model_len=CONTEXT)
    with running_server(engine, max_request_bytes=LIMIT) as server:
        yield server


def raw_exchange(server, head: bytes, body: bytes = b"") -> bytes:
    """Send a request by hand; the server's whole answer."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _head(extra: str) -> bytes:
    return (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n"
    ).encode()


def _is_413(answer: bytes) -> bool:
    status, _, rest = answer.partition(b"\r\n")
    return status.endswith(b"413 Request Entity Too Large") and b'"request_too_large"' in rest


def test_a_declared_length_past_the_limit_is_refused_unread(small):
    """Content-Length says 100 MB and the client waits for the go-ahead: the 413 comes at
    once, no byte of the body read."""
    expect = "Content-Length: 100000000\r\nExpect: 100-continue\r\n"
    assert _is_413(raw_exchange(small, _head(expect)))


def test_a_chunked_body_is_refused_once_it_passes_the_limit(small):
    chunk = b"x" * 16384
    part = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    answer = raw_exchange(small, _head("Transfer-Encoding: chunked\r\n"), part * 8 + b"0\r\n\r\n")
    assert _is_413(answer), answer[:300]


def test_the_client_gets_the_413_not_a_broken_connection(small):
    with pytest.raises(openai.APIStatusError) as info:
        small.client().completions.create(model=MODEL, prompt="x" * 2 * LIMIT, max_tokens=2)
    assert info.value.status_code == 413
    assert info.value.body["code"] == "request_too_large"


def test_bodies_under_the_limit_still_work(small):
    padding = "p" * (LIMIT - 200)  # an ignored field: the body is large, the prompt short
    response = small.post("/v1/completions", json=OK | {"user": padding})
    assert response.status_code == 200, response.text
    error = small.post("/v1/completions", json=OK | {"user": padding + "p" * 400}).json()
    assert error["error"]["code"] == "request_too_large" and error["error"]["param"] is None


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", OK | {"prompt": "x" * (CONTEXT * MAX_CHARS_PER_TOKEN + 1)}, "prompt"),
        ("/v1/completions", OK | {"prompt": ["ok", "y" * 600]}, "prompt"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "z" * 300}] * 2},
            "messages",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}] * 65}, "messages"),
    ],
)
def test_prompts_longer_than_the_context_could_hold_are_refused_untokenized(
    small, path, body, param
):
    error = small.post(path, json=body).json()["error"]
    assert (error["param"], error["code"]) == (param, "context_length_exceeded"), error
    assert "characters" in error["message"] or "messages cannot fit" in error["message"]


def _huge_request(context: int) -> dict:
    """16 prompts of half the character bound each: a second or more of tokenizing, then a
    400 (the tiny byte tokenizer makes a token of each character: 4x the context)."""
    return {"model": MODEL, "prompt": ["ab" * (context * 2)] * 16, "max_tokens": 2}


@pytest.fixture(scope="module")
def long_server(long_context_llama):
    engine = tiny_engine(long_context_llama)
    with running_server(engine) as server:
        yield server


def test_short_prompts_are_not_queued_behind_a_huge_one(long_server):
    """Sent while a huge request is being tokenized, a short one is answered first."""
    context = long_server.app.state.context.bounds.max_model_len
    finished: list[str] = []

    def huge() -> None:
        response = long_server.post("/v1/completions", json=_huge_request(context))
        assert response.json()["error"]["code"] == "context_length_exceeded"
        finished.append("huge")

    thread = threading.Thread(target=huge)
    thread.start()
    time.sleep(0.3)  # the huge request is parsed and in the tokenizer by now
    response = long_server.post("/v1/completions", json=OK)
    finished.append("short")
    thread.join()
    assert response.status_code == 200
    assert finished == ["short", "huge"]


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_memory_comes_back_after_big_requests(long_server):
    """The server (in this process) holds no more memory after four big requests than after
    the first: what a request allocates is given back."""
    body = _huge_request(long_server.app.state.context.bounds.max_model_len)
    body["prompt"] = body["prompt"][:8]
    long_server.post("/v1/completions", json=body)
    after_one = _rss_mib()
    for _ in range(3):
        long_server.post("/v1/completions", json=body)
    assert _rss_mib() - after_one < 64

"""A stub OpenAI-compatible endpoint on loopback for what a real server will not do on demand:
fail, stream garbage, or answer HumanEval with chosen solutions.

The mode is the first path segment: ``http://127.0.0.1:PORT/<mode>/v1``.

- ``echo``: streams the prompt's first eight words back, one per chunk, then usage.
- ``error``: every request gets HTTP 500 with an OpenAI-style error body.
- ``garbage``: a 200 event stream whose data lines are not JSON.
- ``plain``: a 200 ``text/plain`` body, no events at all.
- ``flaky``: odd-numbered requests get HTTP 500, the others are ``echo``.
- ``answers``: the reply to a prompt is ``answers[substring]`` for the first substring the
  prompt contains (set on `Stub`).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Stub:
    port: int
    answers: dict[str, str] = field(default_factory=dict)
    counter: itertools.count = field(default_factory=itertools.count)

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"


def _chunk(text: str) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "stub",
            "choices": [choice]}  # fmt: skip
    return f"data: {json.dumps(body)}\n\n".encode()


def _usage(num_prompt: int, num_completion: int) -> bytes:
    usage = {"prompt_tokens": num_prompt, "completion_tokens": num_completion,
             "total_tokens": num_prompt + num_completion}  # fmt: skip
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "stub",
            "choices": [], "usage": usage}  # fmt: skip
    return f"data: {json.dumps(body)}\n\n".encode()


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            self._json(200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}]})

        def do_POST(self) -> None:
            mode = self.path.strip("/").split("/")[0]
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if mode == "flaky":
                mode = "error" if next(stub.counter) % 2 else "echo"
            if mode == "error":
                self._json(500, {"error": {"message": "stub failure", "type": "server_error"}})
            elif mode == "garbage":
                self._stream([b"data: {this is not json\n\n"])
            elif mode == "plain":
                self._raw(200, "text/plain", b"hello, I am not a stream")
            else:
                prompt = _prompt_text(body)
                words = self._reply(mode, prompt)
                self._stream([*map(_chunk, words), _usage(len(prompt.split()), len(words))])

        def _reply(self, mode: str, prompt: str) -> list[str]:
            if mode == "answers":
                reply = next((a for key, a in stub.answers.items() if key in prompt), "pass")
                return [reply]
            return [w + " " for w in prompt.split()[:8]]

        def _stream(self, events: list[bytes]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for event in [*events, b"data: [DONE]\n\n"]:
                self.wfile.write(event)
                self.wfile.flush()

        def _json(self, status: int, value: object) -> None:
            self._raw(status, "application/json", json.dumps(value).encode())

        def _raw(self, status: int, content_type: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _prompt_text(body: dict) -> str:
    if "messages" in body:
        return "\n".join(m["content"] for m in body["messages"])
    return body["prompt"]


@contextmanager
def running_stub() -> Iterator[Stub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a))
    stub = Stub(server.server_address[1])
    handler = _handler(stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()

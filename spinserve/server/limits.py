"""Bounds on what a request may make the server do before any real work starts.

`BodyLimit` refuses bodies over ``max_bytes`` with 413, known from Content-Length or as a
chunked body passes the limit while it is read; nothing of it is kept or parsed.
`check_prompt_size` refuses, before tokenizing, prompts with more characters than the
context could hold. Text averages about 4 characters a token (English prose; code and
other languages fewer), so `MAX_CHARS_PER_TOKEN` = 8 is generous: only text made mostly of
long repeated runs (separator lines, whitespace) could fit the context and still be refused.
It caps the tokenizer's work and memory at ``max_model_len * 8`` characters a prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spinserve.server.errors import bad_request, error_body

MAX_CHARS_PER_TOKEN = 8
DRAIN_BYTES = 64 << 20  # most of a refused body read (and dropped) so the 413 arrives


class BodyLimit:
    """Reads the whole body (up to the limit) before the app sees it, then replays it.

    A refused body is read on and thrown away (up to `DRAIN_BYTES`) before the 413 is sent:
    a server that closes a connection with unread bytes resets it, and the client would see
    a connection error instead of the answer. A client that sent ``Expect: 100-continue``
    has sent nothing yet and gets the answer at once.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = _int_or_none(headers.get(b"content-length"))
        if declared is not None and declared > self.max_bytes:
            if headers.get(b"expect", b"").lower() != b"100-continue":
                await _drain(receive, DRAIN_BYTES)
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await _drain(receive, DRAIN_BYTES)
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = error_body(
            f"The request body is larger than the server's limit of {self.max_bytes} bytes",
            code="request_too_large",
        )
        response = JSONResponse(body, status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


async def _drain(receive: Receive, max_bytes: int) -> None:
    """Read and drop the rest of a body, up to ``max_bytes``."""
    size = 0
    while size <= max_bytes:
        message = await receive()
        size += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def _int_or_none(value: bytes | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives ``body`` once, then what the client sends (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def max_prompt_chars(max_model_len: int) -> int:
    return max_model_len * MAX_CHARS_PER_TOKEN


def check_prompt_size(texts: Sequence[str], max_model_len: int, param: str) -> None:
    """400 naming ``param`` if ``texts`` (one prompt: its text, or its messages' texts)
    hold more characters than any prompt that fits the context."""
    limit = max_prompt_chars(max_model_len)
    num_chars = sum(len(text) for text in texts)
    if num_chars > limit:
        raise bad_request(
            f"{param} has {num_chars} characters; this model's context of {max_model_len} "
            f"tokens takes at most {limit} ({MAX_CHARS_PER_TOKEN} a token)",
            param,
            "context_length_exceeded",
        )

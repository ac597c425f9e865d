"""One streamed request to an OpenAI-compatible endpoint, timed from the client's side.

Times come from the arrival of stream chunks: TTFT is the first chunk that carries text, the
chunk gaps after it are the inter-token latencies (a server that sends several tokens in one
chunk, as speculation does, shows fewer and longer gaps), end to end is the last byte. The
output token count is the server's ``usage`` when it sends one, else the number of text
chunks. A failure of any kind becomes ``error`` on the record -- one line, kept with the text
received so far -- never an exception out of `send`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import openai

from spinserve.bench.datasets import BenchPrompt

CHAT = "chat"
COMPLETIONS = "completions"
ENDPOINTS = (CHAT, COMPLETIONS)


@dataclass(frozen=True)
class Endpoint:
    """Where requests go and what rides along with each: ``extra_body`` for server-specific
    fields such as spinserve's ``drafter``."""

    name: str
    base_url: str
    model: str
    api_key: str = "none"
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sampling:
    endpoint: str = CHAT
    max_tokens: int = 256
    temperature: float = 0.0
    timeout_s: float = 600.0


@dataclass
class RequestRecord:
    """What one request did; times in seconds, relative to ``start`` (monotonic)."""

    config: str
    index: int  # the prompt's place in the sample: the same prompt across configurations
    prompt_id: str
    category: str
    load: str
    start: float = 0.0
    text: str = ""
    num_output_tokens: int = 0
    num_prompt_tokens: int | None = None
    ttft: float | None = None
    e2e: float | None = None
    itl: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def make_client(endpoint: Endpoint, timeout_s: float) -> openai.AsyncOpenAI:
    # No retries: a retried request would hide a failure and blur its timing.
    return openai.AsyncOpenAI(
        base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0, timeout=timeout_s
    )


async def send(
    client: openai.AsyncOpenAI,
    endpoint: Endpoint,
    prompt: BenchPrompt,
    sampling: Sampling,
    record: RequestRecord,
) -> RequestRecord:
    """Stream ``prompt`` to ``endpoint``, filling ``record``; never raises for a bad endpoint."""
    record.start = time.monotonic()
    num_chunks, last = 0, None
    try:
        stream = await _create(client, endpoint, prompt, sampling)
        async with stream:
            async for chunk in stream:
                now = time.monotonic() - record.start
                num_chunks += 1
                if _take(chunk, record):
                    if last is None:
                        record.ttft = now
                    else:
                        record.itl.append(now - last)
                    last = now
        if num_chunks == 0:
            record.error = "the response held no stream chunks (not an OpenAI-style stream?)"
    except Exception as exc:  # every failure is a result to record
        record.error = describe(exc)
    record.e2e = time.monotonic() - record.start
    return record


async def _create(
    client: openai.AsyncOpenAI, endpoint: Endpoint, prompt: BenchPrompt, sampling: Sampling
) -> Any:
    common: dict[str, Any] = dict(
        model=endpoint.model,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=endpoint.extra_body or None,
    )
    if sampling.endpoint == CHAT:
        return await client.chat.completions.create(messages=list(prompt.messages), **common)
    return await client.completions.create(prompt=prompt.text, **common)


def _take(chunk: Any, record: RequestRecord) -> bool:
    """Add a chunk's text and usage to ``record``; True when it carried text."""
    usage = getattr(chunk, "usage", None)
    if usage is not None:
        record.num_output_tokens = usage.completion_tokens
        record.num_prompt_tokens = usage.prompt_tokens
    text = "".join(_chunk_text(choice) for choice in chunk.choices or ())
    if not text:
        return False
    record.text += text
    if usage is None:
        record.num_output_tokens += 1  # replaced by the server's count when usage comes
    return True


def _chunk_text(choice: Any) -> str:
    delta = getattr(choice, "delta", None)
    if delta is not None:
        return delta.content or ""
    return getattr(choice, "text", None) or ""


def describe(exc: BaseException) -> str:
    """One line naming what went wrong, for the user and for the JSON."""
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {_status_message(exc)}"
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = _root_cause(exc)
        return f"cannot connect: {_first_line(str(cause)) or type(cause).__name__}"
    if isinstance(exc, json.JSONDecodeError):
        return f"garbled stream: a chunk is not JSON ({exc.msg})"
    return f"{type(exc).__name__}: {_first_line(str(exc))}"


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause: "[Errno 111] Connection refused" rather than a wrapper's words."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return _first_line(str(message))
    return _first_line(exc.message)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""

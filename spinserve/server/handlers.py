"""The generation flow behind /v1/completions and /v1/chat/completions.

check the model -> sub-requests (one per prompt and choice) -> admit and add
(every error so far is a 4xx, before a byte is sent) -> stream SSE chunks, or collect
a JSON body while watching for the client leaving -> close (aborts what is unfinished)
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from spinserve.server.async_engine import AsyncEngine, RequestStream
from spinserve.server.errors import model_not_found
from spinserve.server.messages import Prompt
from spinserve.server.params import ModelBounds, subrequests
from spinserve.server.protocol import SamplingFields
from spinserve.server.responses import (
    DONE,
    Collected,
    Envelope,
    cached_tokens,
    prompt_tokens,
    sse,
    usage,
)
from spinserve.server.streaming import EventStreamResponse, until_disconnect

logger = logging.getLogger("spinserve.server")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left; nobody receives it
REQUEST_ID_HEADER = "X-Request-Id"  # the id the server's log lines carry


@dataclass(frozen=True)
class ServerContext:
    """What the routes need: the engine handle and facts about the served model."""

    engine: AsyncEngine
    model_name: str
    drafters: tuple[str, ...]
    num_draft_tokens: int
    bounds: ModelBounds
    created: int
    policy: str = "spin"


async def generate(
    ctx: ServerContext,
    raw: Request,
    body: SamplingFields,
    prompts: Sequence[Prompt],
    max_tokens: int | None,
    chat: bool,
) -> Response:
    if body.model is not None and body.model != ctx.model_name:
        raise model_not_found(body.model)
    prefix = "chatcmpl" if chat else "cmpl"
    envelope = Envelope(f"{prefix}-{secrets.token_hex(12)}", int(time.time()), ctx.model_name, chat)
    stream = await _admit(ctx, envelope, body, prompts, max_tokens)
    n = body.n or 1
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = stream_events(stream, envelope, n, include_usage)
        return EventStreamResponse(events, stream.close, {REQUEST_ID_HEADER: envelope.id})
    try:
        collected = await until_disconnect(raw, collect(stream, envelope, n))
    finally:
        stream.close()
    if collected is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return JSONResponse(collected.body(), headers={REQUEST_ID_HEADER: envelope.id})


async def _admit(
    ctx: ServerContext,
    envelope: Envelope,
    body: SamplingFields,
    prompts: Sequence[Prompt],
    max_tokens: int | None,
) -> RequestStream:
    """Sub-requests added to the engine; raises (4xx) before anything is sent."""
    param = "messages" if envelope.chat else "prompt"
    try:
        subs = subrequests(
            envelope.id,
            prompts,
            body,
            max_tokens,
            drafters=ctx.drafters,
            bounds=ctx.bounds,
            prompt_param=param,
        )
        stream = await ctx.engine.add(subs)
    except Exception as exc:  # turned into a response by the app's error handlers
        logger.info("%s rejected: %s", envelope.id, exc)
        raise
    logger.info(
        "%s admitted: %d choice(s), prompt tokens %s, max_tokens %s, stream %s",
        envelope.id,
        len(subs),
        stream.num_prompt_tokens[:: body.n or 1],
        max_tokens,
        bool(body.stream),
    )
    return stream


async def collect(stream: RequestStream, envelope: Envelope, n: int) -> Collected:
    collected = Collected(envelope, stream.num_prompt_tokens, n)
    async for update in stream.updates():
        if update.error is not None:
            raise update.error
        collected.add(update)
    return collected


async def stream_events(
    stream: RequestStream, env: Envelope, n: int, include_usage: bool
) -> AsyncIterator[str]:
    """Chunks as the engine produces text; a final chunk per choice; usage; [DONE]."""
    if env.chat:
        for index in range(len(stream.request_ids)):
            yield sse(env.chunk([env.role_choice(index)], include_usage))
    completion_tokens = 0
    cached: dict[int, int] = {}
    async for update in stream.updates():
        if update.error is not None:
            yield sse(update.error.body())
            break
        if update.new_text:
            yield sse(env.chunk([env.text_choice(update.index, update.new_text)], include_usage))
        if update.finished:
            completion_tokens += update.num_output_tokens
            cached[update.index] = update.num_cached_tokens
            yield sse(env.chunk([env.final_choice(update)], include_usage))
    else:
        if include_usage:
            num_prompt = prompt_tokens(stream.num_prompt_tokens, n)
            num_cached = cached_tokens(cached, len(stream.num_prompt_tokens), n)
            yield sse(env.usage_chunk(usage(num_prompt, completion_tokens, num_cached)))
    yield DONE

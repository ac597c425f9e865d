"""Noticing clients that leave: a server-sent-events response and a disconnect watch.

Both make sure a request's engine work is aborted as soon as its client is gone, whether
the client was reading a stream or waiting for a JSON body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` from ``events``; ``on_close`` runs however the stream ends
    (finished, client disconnected, or an error), so the request is always cleaned up.

    Starlette already stops sending when the client disconnects (it listens for
    ``http.disconnect`` beside the stream); this adds the guaranteed clean-up.
    """

    def __init__(
        self,
        events: AsyncIterator[str],
        on_close: Callable[[], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None (and ``work`` cancelled) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    return task.result() if task in done else None


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next message is the disconnect (or the response end).
    while (await request.receive())["type"] != "http.disconnect":
        pass

"""`AsyncEngine`: the event loop's handle on the engine thread, and the admission gate.

    loop (handlers)                          engine thread (`EngineLoop`)
    add(subrequests): tokenize (`TokenizerLanes`: threads with tokenizer copies)
                     --AddCommand------->    engine.add_request (all or none)
       awaits reply   <--Future-----------   prompt lengths, or the 400 error
    RequestStream.updates() <--Update----    engine.step() outputs, one loop wake-up a step
    RequestStream.close() --AbortCommand->   engine.abort: the KV blocks are freed

Commands go through one FIFO queue, so an abort always lands after its add. Handlers
always close their stream (in ``finally``), which aborts whatever is unfinished: a client
that disconnects frees its KV at the next engine iteration.

Admission: new requests get 503 while draining, and 429 when the requests admitted and not
yet closed (each choice counts) would exceed ``max_queue``. Shutdown: `drain` stops
admitting, waits for the admitted requests up to a timeout, then aborts the rest (their
streams end with finish_reason "abort"); `stop` ends the thread.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from spinserve.engine.engine import LLMEngine
from spinserve.server.engine_loop import EngineLoop
from spinserve.server.errors import ApiError, queue_full, shutting_down
from spinserve.server.messages import (
    STOP,
    AbortAllCommand,
    AbortCommand,
    AddCommand,
    SubRequest,
    Update,
)
from spinserve.server.metrics import ServerMetrics
from spinserve.server.tokenizing import TokenizerLanes

logger = logging.getLogger("spinserve.server")


class RequestStream:
    """The updates of one HTTP request's sub-requests (its choices), as they come."""

    def __init__(self, request_ids: list[str], release: Callable[[RequestStream], None]) -> None:
        self.queue: asyncio.Queue[Update] = asyncio.Queue()
        self.request_ids = request_ids
        self.num_prompt_tokens: list[int] = []
        self.unfinished = set(request_ids)
        self._release = release
        self._closed = False

    async def updates(self) -> AsyncIterator[Update]:
        while self.unfinished:
            update = await self.queue.get()
            if update.finished:
                self.unfinished.discard(update.request_id)
            yield update

    def close(self) -> None:
        """Abort what is unfinished and give back the admission slots; idempotent."""
        if not self._closed:
            self._closed = True
            self._release(self)


class AsyncEngine:
    def __init__(
        self,
        engine: LLMEngine,
        metrics: ServerMetrics,
        max_queue: int,
        special_in_messages: bool = False,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._tokenizing = TokenizerLanes(engine.tokenizer, special_in_messages)
        self.max_queue = max_queue
        self.draining = False
        self.num_admitted = 0  # sub-requests admitted and not yet closed

    def start(self) -> None:
        """Start the engine thread; call from the event loop that will read the outputs."""
        loop = asyncio.get_running_loop()
        runner = EngineLoop(self._engine, self._metrics, self._commands, loop)
        self._thread = threading.Thread(target=runner.run, name="spinserve-engine", daemon=True)
        self._thread.start()

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def add(self, subrequests: Sequence[SubRequest]) -> RequestStream:
        """Admit, tokenize, add; raises ApiError (429/503/400) or InvalidRequestError."""
        self._admit(len(subrequests))
        stream = RequestStream([s.request_id for s in subrequests], self._release)
        self.num_admitted += len(subrequests)
        sent = False
        try:
            subs = await self._tokenizing.tokenize(list(subrequests))
            command = AddCommand(subs, stream.queue)
            self._commands.put(command)
            sent = True
            stream.num_prompt_tokens = await asyncio.wrap_future(command.reply)
        except BaseException as exc:
            if not (sent and isinstance(exc, asyncio.CancelledError)):
                stream.unfinished.clear()  # refused as a whole: nothing was added
            stream.close()
            raise
        return stream

    def _admit(self, num: int) -> None:
        if self.draining or not self.is_alive:
            self._metrics.observe_rejected("shutting_down")
            raise shutting_down()
        if num > self.max_queue:
            self._metrics.observe_rejected("too_many_choices")
            raise ApiError(
                400, f"{num} choices exceed the server's queue of {self.max_queue}", param="n"
            )
        if self.num_admitted + num > self.max_queue:
            self._metrics.observe_rejected("queue_full")
            raise queue_full(self.max_queue)

    def _release(self, stream: RequestStream) -> None:
        self.num_admitted -= len(stream.request_ids)
        if stream.unfinished:
            ids = tuple(sorted(stream.unfinished))
            logger.info("%s: client gone or response failed; aborting", ", ".join(ids))
            self._commands.put(AbortCommand(ids))

    async def drain(self, timeout: float, give_up: Callable[[], bool] = lambda: False) -> None:
        """Stop admitting; let admitted requests finish for ``timeout`` s; abort the rest."""
        self.draining = True
        logger.info(
            "draining: %d requests admitted, waiting up to %.1f s", self.num_admitted, timeout
        )
        await self._wait_admitted(timeout, give_up)
        if self.num_admitted:
            logger.warning("aborting %d requests still unfinished at shutdown", self.num_admitted)
            self._commands.put(AbortAllCommand())
            await self._wait_admitted(5.0, give_up)  # time to send their last chunks

    async def _wait_admitted(self, timeout: float, give_up: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        while self.num_admitted and time.monotonic() < deadline and not give_up():
            await asyncio.sleep(0.02)

    async def stop(self, timeout: float = 10.0) -> None:
        """End the engine thread (aborting anything left) and wait for it."""
        self.draining = True
        self._commands.put(STOP)
        self._tokenizing.shutdown()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)

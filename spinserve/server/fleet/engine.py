"""`FleetEngine`: the ingress's engine handle, what `AsyncEngine` is to a single server.

The routes and handlers call ``add`` and read the returned stream exactly as they do on
one server; here ``add`` sends the request to a replica through Ray Serve (the router picks
which, `router`) and the stream reads the replica's answer (`wire`).

Admission: 429 when the ingress already holds as many sub-requests as the replicas' queues
(``max_queue`` each, over the replicas reporting) hold together: every queue is full.
A replica that dies: a request whose client does not stream is sent again to another
replica (up to `MAX_RETRIES` times) and, greedy, gives the same output; a stream that had
sent nothing yet is sent again too; a stream that had sent text ends with an error event.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError

from spinserve.server.errors import ApiError, queue_full, shutting_down
from spinserve.server.fleet.affinity import prefix_keys
from spinserve.server.fleet.metrics import FleetMetrics
from spinserve.server.fleet.wire import WireError
from spinserve.server.messages import SubRequest, Update

logger = logging.getLogger("spinserve.fleet")
MAX_RETRIES = 2
# The replicas that admitted the HTTP request being served in this context, for its
# X-Spinserve-Replica header (`ingress.ReplicaHeader` sets a fresh list per request).
SERVED_BY: contextvars.ContextVar[list[str]] = contextvars.ContextVar("served_by")
REPLICA_LOST = (RayActorError, ActorUnavailableError)


def lost(request_id: str) -> ApiError:
    """The error event of a stream whose replica died."""
    return ApiError(
        503,
        f"The replica serving request {request_id} stopped; the output ends here",
        "server_error",
        None,
        "replica_died",
    )


class FleetEngine:
    def __init__(self, replicas: Any, max_queue: int, metrics: FleetMetrics) -> None:
        """``replicas``: the engine replicas' DeploymentHandle."""
        self._replicas = replicas.options(stream=True)
        self._metrics = metrics
        self.max_queue = max_queue
        self.num_replicas = 1  # reporting, as the board last said (`set_replicas`)
        self.draining = False
        self.num_admitted = 0

    @property
    def is_alive(self) -> bool:
        return True  # the fleet's health is the replicas' (the fleet's /health asks them)

    def set_replicas(self, num: int) -> None:
        self.num_replicas = max(1, num)

    async def add(self, subrequests: Sequence[SubRequest]) -> FleetStream:
        """Admit and send to a replica; raises ApiError (429/503/400...) as a server does."""
        capacity = self.max_queue * self.num_replicas
        if self.draining:
            self._metrics.observe_rejected("shutting_down")
            raise shutting_down()
        if self.num_admitted + len(subrequests) > capacity:
            self._metrics.observe_rejected("queue_full")
            raise queue_full(capacity)
        stream = FleetStream(self, list(subrequests))
        self.num_admitted += len(subrequests)
        try:
            await stream.open()
        except BaseException:
            stream.close()
            raise
        return stream

    def send(self, subrequests: list[SubRequest], keys: tuple[str, ...]) -> Any:
        return self._replicas.generate.remote(subrequests, affinity=keys)

    def release(self, num: int) -> None:
        self.num_admitted -= num

    def observe_retry(self) -> None:
        self._metrics.observe_retry()


class FleetStream:
    """One HTTP request's answer from a replica, sent again where the module docstring says."""

    def __init__(self, fleet: FleetEngine, subrequests: list[SubRequest]) -> None:
        self.request_ids = [s.request_id for s in subrequests]
        self.num_prompt_tokens: list[int] = []
        self.unfinished = set(self.request_ids)
        self._index = {s.request_id: s.index for s in subrequests}
        self._subs = subrequests
        self._fleet = fleet
        self._keys = prefix_keys(subrequests[0].prompt)
        self._streaming = any(s.stream for s in subrequests)
        self._answer: Any = None
        self._sent_any = False  # an update went to the handler
        self._tries = 0
        self._closed = False

    async def open(self) -> None:
        """Send the request; returns once a replica admitted it (raises its refusal)."""
        while True:
            self._tries += 1
            self._answer = self._fleet.send(self._subs, self._keys)
            try:
                first = await self._answer.__anext__()
            except REPLICA_LOST as exc:
                if self._tries > MAX_RETRIES:
                    raise ApiError(
                        503, "No replica could take the request", "service_unavailable"
                    ) from exc
                logger.warning("%s: replica lost before admission; retrying", self.request_ids[0])
                self._fleet.observe_retry()
                continue
            if isinstance(first, WireError):
                self.unfinished.clear()
                raise first.to_error()
            self.num_prompt_tokens = first.num_prompt_tokens
            served = SERVED_BY.get(None)
            if served is not None:
                served.append(first.replica)
            return

    async def updates(self) -> AsyncIterator[Update]:
        while self.unfinished:
            try:
                async for update in self._read():
                    yield update
            except REPLICA_LOST:
                pass
            if not self.unfinished:
                return
            # The replica went away: its answer failed, or ended before every choice did.
            if self._may_retry() and await self._reopen():
                continue
            for update in self._lost():
                yield update
            return

    async def _read(self) -> AsyncIterator[Update]:
        """The current replica's updates of choices not yet delivered (a retry repeats the
        ones an earlier replica finished)."""
        async for item in self._answer:
            update = item.to_update()
            if update.request_id not in self.unfinished:
                continue
            if update.finished:
                self.unfinished.discard(update.request_id)
            self._sent_any = True
            yield update
            if not self.unfinished:
                return

    async def _reopen(self) -> bool:
        self._fleet.observe_retry()
        try:
            await self.open()
        except ApiError as exc:
            logger.warning("%s: no replica took the retry: %s", self.request_ids[0], exc)
            return False
        return True

    def _may_retry(self) -> bool:
        return self._tries <= MAX_RETRIES and not (self._streaming and self._sent_any)

    def _lost(self) -> list[Update]:
        ids = sorted(self.unfinished)
        logger.warning("replica lost while serving %s", ", ".join(ids))
        self.unfinished.clear()
        return [
            Update(rid, self._index[rid], finished=True, finish_reason="error", error=lost(rid))
            for rid in ids
        ]

    def close(self) -> None:
        """Give back the admission slots; cancel the replica's work if unfinished."""
        if self._closed:
            return
        self._closed = True
        self._fleet.release(len(self.request_ids))
        if self.unfinished and self._answer is not None:
            self._answer.cancel()

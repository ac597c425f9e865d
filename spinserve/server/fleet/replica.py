"""`EngineReplica`: one engine with its drafters as a Ray Serve deployment's replica.

The replica runs the single server's `AsyncEngine` (its engine thread, admission and
tokenizer threads) and answers `generate` with a stream (`wire`): the prompt lengths or the
refusal, then the updates; of a request whose client does not stream, only the final ones
(the ingress can then retry it elsewhere without having sent a byte). Beside serving it
reports its load and metrics to the `FleetBoard` every `REPORT_S` seconds and trades what
its selection policy learned for the fleet's prior every ``prior_sync_s``; a new replica
loads the fleet's prior before it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import ray
import torch
from prometheus_client import CollectorRegistry, generate_latest
from ray import serve

from spinserve.engine.engine import LLMEngine
from spinserve.selection.prior import Learned, SharedPrior
from spinserve.selection.spin import SpinPolicy
from spinserve.server.async_engine import AsyncEngine
from spinserve.server.config import ServerConfig
from spinserve.server.errors import ApiError
from spinserve.server.fleet.board import REPORT_S, ReplicaReport
from spinserve.server.fleet.wire import Admitted, ModelFacts, WireError, WireUpdate
from spinserve.server.messages import SubRequest
from spinserve.server.metrics import ServerMetrics
from spinserve.server.params import ModelBounds
from spinserve.types.errors import InvalidRequestError

logger = logging.getLogger("spinserve.fleet")


class EngineReplica:
    async def __init__(
        self,
        make_engine: Callable[[], LLMEngine],
        model_name: str,
        server: ServerConfig,
        prior_sync_s: float,
        num_threads: int,
        board: Any,  # the FleetBoard actor
    ) -> None:
        """Everything here is the same for every replica (a change would make Ray Serve
        replace them all, where a new count only adds or removes replicas)."""
        torch.set_num_threads(num_threads)
        engine = make_engine()
        drafters = tuple(engine.drafters)
        self._metrics = ServerMetrics(CollectorRegistry(), model_name, drafters)
        self._engine = AsyncEngine(
            engine, self._metrics, server.max_queue, server.allow_special_tokens_in_messages
        )
        self._facts = ModelFacts(
            model_name,
            drafters,
            engine.config.speculative.num_draft_tokens,
            ModelBounds(engine.max_model_len, engine.runner.vocab_size),
            engine.policy.name,
        )
        self._server, self._board, self._sync_s = server, board, prior_sync_s
        self._id = serve.get_replica_context().replica_id.unique_id
        self._actor_name = ray.get_runtime_context().get_actor_name() or ""
        self._prior = _spin_prior(engine)
        if self._prior is not None:
            self._prior.take_journal()  # from now on, what it learns is kept for the fleet
            state = await board.prior_state.remote()
            if state:
                self._prior.load(state)
                logger.info("replica %s starts with the fleet's prior", self._id)
        self._engine.start()
        self._tasks = [asyncio.create_task(self._report_forever())]
        if self._prior is not None:
            self._tasks.append(asyncio.create_task(self._sync_prior_forever(self._prior)))

    async def generate(
        self, subrequests: list[SubRequest], affinity: tuple[str, ...] = ()
    ) -> AsyncIterator[Any]:
        """The request's stream (module docstring). ``affinity``: the prompt's prefix keys,
        read by the router that chose this replica."""
        try:
            stream = await self._engine.add(subrequests)
        except (ApiError, InvalidRequestError) as exc:
            yield WireError.of(exc)
            return
        try:
            yield Admitted(self._id, stream.num_prompt_tokens)
            streaming = any(sub.stream for sub in subrequests)
            async for update in stream.updates():
                if streaming or update.finished:
                    yield WireUpdate.of(update)
        finally:
            stream.close()  # aborts what is unfinished when the ingress cancels

    def facts(self) -> ModelFacts:
        return self._facts

    def replica_id(self) -> str:
        return self._id

    def check_health(self) -> None:
        """Ray Serve replaces a replica whose engine thread has stopped."""
        if not self._engine.is_alive:
            raise RuntimeError("the engine thread is not running")

    async def __del__(self) -> None:
        if not hasattr(self, "_tasks"):
            return  # stopped before it finished starting
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await self._board.leave.remote(self._id)
        await self._engine.drain(self._server.shutdown_timeout)
        await self._engine.stop()

    # --- telling the board ---------------------------------------------------------------

    def _report(self) -> ReplicaReport:
        return ReplicaReport(
            replica=self._id,
            actor_name=self._actor_name,
            num_admitted=self._engine.num_admitted,
            max_queue=self._engine.max_queue,
            metrics_text=generate_latest(self._metrics.registry).decode(),
            prior_weight=self._prior.total_weight if self._prior is not None else 0.0,
            draining=self._engine.draining,
            time=time.time(),
        )

    async def _report_forever(self) -> None:
        while True:
            try:
                await self._board.report.remote(self._report())
            except Exception:
                logger.exception("replica %s: reporting to the fleet board failed", self._id)
            await asyncio.sleep(REPORT_S)

    async def _sync_prior_forever(self, prior: SharedPrior) -> None:
        pending: list[Learned] = []  # kept until the board has it
        while True:
            await asyncio.sleep(self._sync_s)
            pending += prior.take_journal()
            try:
                state = await self._board.sync_prior.remote(pending, prior.memory, prior.max_weight)
            except Exception:
                logger.exception("replica %s: merging the prior failed", self._id)
                continue
            pending = []
            prior.load(state)


def _spin_prior(engine: LLMEngine) -> SharedPrior | None:
    """The shared prior of a learning policy (spin's); other policies learn nothing."""
    policy = engine.policy
    return policy.shared.prior if isinstance(policy, SpinPolicy) else None

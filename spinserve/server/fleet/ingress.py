"""`FleetIngress`: the Ray Serve deployment that speaks the OpenAI API for the fleet.

It builds the single server's FastAPI app (`app.serving_app`: the same routes, error
shapes, body limit and API key check) around a `FleetEngine` instead of an `AsyncEngine`,
with the fleet's own /health (up while a replica reports) and /metrics (every replica's,
labelled, `metrics`) in front. The model's facts come from a replica when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from ray import serve
from ray.exceptions import RayActorError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spinserve.server.app import serving_app
from spinserve.server.config import ServerConfig
from spinserve.server.errors import ApiError, shutting_down
from spinserve.server.fleet.board import REPORT_S
from spinserve.server.fleet.engine import SERVED_BY, FleetEngine
from spinserve.server.fleet.metrics import FleetMetrics
from spinserve.server.fleet.wire import ModelFacts
from spinserve.server.handlers import ServerContext

REPLICA_HEADER = b"x-spinserve-replica"
logger = logging.getLogger("spinserve.fleet")


@serve.ingress()
class FleetIngress:
    async def __init__(self, replicas: Any, board: Any, server: ServerConfig) -> None:
        """``replicas``: the engine replicas' DeploymentHandle; ``board``: the FleetBoard."""
        facts: ModelFacts = await replicas.facts.remote()
        self.metrics = FleetMetrics(CollectorRegistry(), facts.model_name)
        self.engine = FleetEngine(replicas, server.max_queue, self.metrics)
        self._board = board
        self._server = server
        self._context = ServerContext(
            engine=self.engine,  # type: ignore[arg-type]  # the same interface
            model_name=facts.model_name,
            drafters=facts.drafters,
            num_draft_tokens=facts.num_draft_tokens,
            bounds=facts.bounds,
            created=int(time.time()),
            policy=facts.policy,
        )
        self._watch = asyncio.create_task(self._watch_replicas())

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = serving_app(
            self._server, _no_lifespan, self._context, None, fleet_routes(self._board, self)
        )
        app.add_middleware(ReplicaHeader)
        return app

    async def reports(self) -> list[Any]:
        """The replicas' last reports; none while the board cannot be reached."""
        try:
            return await self._board.reports.remote()
        except RayActorError:
            logger.exception("the fleet board cannot be reached")
            return []

    async def _watch_replicas(self) -> None:
        """Keep the count of replicas reporting, which sets the admission limit."""
        while True:
            with contextlib.suppress(Exception):
                self.engine.set_replicas(len(await self.reports()))
            await asyncio.sleep(REPORT_S)

    async def __del__(self) -> None:
        self.engine.draining = True
        self._watch.cancel()


class ReplicaHeader:
    """Adds ``X-Spinserve-Replica``: the replica that served the request (the last one, if
    it was sent again after a replica died), for following the routing from outside."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        served: list[str] = []
        SERVED_BY.set(served)

        async def send_with_replica(message: Message) -> None:
            if message["type"] == "http.response.start" and served:
                headers = [*message.get("headers", []), (REPLICA_HEADER, served[-1].encode())]
                message = message | {"headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_replica)


@asynccontextmanager
async def _no_lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield  # the replicas own the engines


def fleet_routes(board: Any, ingress: FleetIngress) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> Response:
        if ingress.engine.draining:
            raise shutting_down()
        up = [r for r in await ingress.reports() if not r.draining]
        if not up:
            raise ApiError(503, "no replica is up", "service_unavailable", code="no_replica")
        return JSONResponse({"status": "ok", "replicas": len(up)})

    @router.get("/metrics")
    async def prometheus() -> Response:
        reports = await ingress.reports()
        weight = await board.prior_weight.remote() if reports else 0.0
        text = ingress.metrics.exposition(reports, weight)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return router

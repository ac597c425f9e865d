"""`build_app`: the FastAPI application in front of one `LLMEngine`.

The app owns its engine thread (started and stopped by the lifespan), its Prometheus
registry (several apps can live in one process), and error handlers that turn every
failure into OpenAI's error shape: validation errors are 400 (not FastAPI's 422), unknown
routes 404, anything unexpected 500 (logged with its traceback). In front of the routes,
outermost first: the API key check (`auth`), then the body size limit (`limits`). The
docs pages exist only when the config enables them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException

from spinserve import __version__
from spinserve.engine.engine import LLMEngine
from spinserve.server.async_engine import AsyncEngine
from spinserve.server.auth import OPEN_PATHS, ApiKeyGate
from spinserve.server.config import ServerConfig
from spinserve.server.errors import ApiError, error_body
from spinserve.server.handlers import ServerContext
from spinserve.server.limits import BodyLimit
from spinserve.server.metrics import ServerMetrics
from spinserve.server.params import ModelBounds
from spinserve.server.routes import router
from spinserve.types.errors import InvalidRequestError

logger = logging.getLogger("spinserve.server")
DOCS_PATHS = {"docs_url": "/docs", "redoc_url": "/redoc", "openapi_url": "/openapi.json"}


def build_app(engine: LLMEngine, model_name: str, config: ServerConfig | None = None) -> FastAPI:
    """An app serving ``engine`` as model ``model_name``; nothing runs until it starts."""
    config = config or ServerConfig()
    drafters = tuple(engine.drafters)
    metrics = ServerMetrics(CollectorRegistry(), model_name, drafters)
    async_engine = AsyncEngine(
        engine, metrics, config.max_queue, config.allow_special_tokens_in_messages
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async_engine.start()
        yield
        await async_engine.stop()

    context = ServerContext(
        engine=async_engine,
        model_name=model_name,
        drafters=drafters,
        num_draft_tokens=engine.config.speculative.num_draft_tokens,
        bounds=ModelBounds(engine.max_model_len, engine.runner.vocab_size),
        created=int(time.time()),
        policy=engine.policy.name,
    )
    return serving_app(config, lifespan, context, metrics)


def serving_app(
    config: ServerConfig,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    context: ServerContext | None,
    metrics: ServerMetrics | None,
    routes: APIRouter | None = None,
) -> FastAPI:
    """The API's routes, error shapes and middleware around a context, which the lifespan
    may set (``app.state.context``) when it is known only once the app starts. ``routes``
    come before the API's own and win where both have a path (a fleet's /health)."""
    docs = DOCS_PATHS if config.enable_docs else dict.fromkeys(DOCS_PATHS)
    app = FastAPI(title="spinserve", version=__version__, lifespan=lifespan, **docs)
    app.state.metrics = metrics
    app.state.config = config
    app.state.context = context
    install_error_handlers(app)
    if routes is not None:
        app.include_router(routes)
    app.include_router(router)
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes)
    if config.api_key is not None:  # added last: runs first
        open_paths = OPEN_PATHS | (set(DOCS_PATHS.values()) if config.enable_docs else set())
        app.add_middleware(ApiKeyGate, api_key=config.api_key, open_paths=open_paths)
    return app


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(InvalidRequestError, _invalid_request)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _invalid_request(request: Request, exc: InvalidRequestError) -> JSONResponse:
    return JSONResponse(error_body(str(exc), param=exc.param), status_code=400)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 becomes OpenAI's 400, naming the first bad field."""
    error = _most_telling(exc.errors())
    loc = [str(part) for part in error.get("loc", ())]
    in_body = loc[:1] == ["body"]
    param = loc[1] if in_body and len(loc) > 1 else None
    if error.get("type") == "json_invalid":
        reason = error.get("ctx", {}).get("error", "cannot parse the body")
        message, param = f"malformed JSON: {reason}", None
    elif in_body and param is None:
        message = "the request body must be a JSON object"
    else:
        where = ".".join(p for p in (loc[1:] if in_body else loc) if not _is_union_tag(p))
        message = f"{where}: {error.get('msg', 'invalid value')}"
    return JSONResponse(error_body(message, param=param), status_code=400)


def _most_telling(errors: Sequence[Any]) -> dict[str, Any]:
    """The first error, but of a union field the branch that matched the input's type
    (``stop: ["a", ...]`` too long says so, not "should be a valid string")."""
    if not errors:
        return {}
    field = errors[0].get("loc", ())[:2]
    same = [e for e in errors if e.get("loc", ())[:2] == field]
    return next((e for e in same if not str(e.get("type", "")).endswith("_type")), same[0])


def _is_union_tag(part: str) -> bool:
    """pydantic names union branches in error locations: ``str``, ``list[int]``..."""
    return "[" in part or "-" in part or part in ("str", "int", "float", "bool")


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(
        error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error in %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

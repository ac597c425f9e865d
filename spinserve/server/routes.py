"""The HTTP routes: thin functions that validate the body and call the generation flow."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from spinserve.server.errors import ApiError, model_not_found, shutting_down
from spinserve.server.handlers import ServerContext, generate
from spinserve.server.metrics import ServerMetrics
from spinserve.server.params import chat_prompt, completion_prompts
from spinserve.server.protocol import ChatCompletionRequest, CompletionRequest

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {}}}
    for code, text in (
        (400, "invalid request"),
        (401, "missing or wrong API key (with --api-key)"),
        (404, "unknown model"),
        (413, "request body past --max-request-bytes"),
        (429, "queue full"),
        (503, "shutting down"),
    )
}


def context(request: Request) -> ServerContext:
    return request.app.state.context


def metrics(request: Request) -> ServerMetrics:
    return request.app.state.metrics


Context = Annotated[ServerContext, Depends(context)]
Metrics = Annotated[ServerMetrics, Depends(metrics)]


@router.post("/v1/completions", responses=ERRORS)
async def completions(body: CompletionRequest, request: Request, ctx: Context) -> Response:
    prompts = completion_prompts(body, ctx.bounds)
    return await generate(ctx, request, body, prompts, body.max_tokens, chat=False)


@router.post("/v1/chat/completions", responses=ERRORS)
async def chat_completions(body: ChatCompletionRequest, request: Request, ctx: Context) -> Response:
    max_tokens = body.max_completion_tokens or body.max_tokens
    prompt = chat_prompt(body, ctx.bounds)
    return await generate(ctx, request, body, [prompt], max_tokens, chat=True)


@router.get("/v1/models")
async def list_models(ctx: Context) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(ctx)]}


@router.get("/v1/models/{model:path}", responses={404: ERRORS[404]})
async def get_model(model: str, ctx: Context) -> dict[str, Any]:
    if model != ctx.model_name:
        raise model_not_found(model)
    return _model_card(ctx)


def _model_card(ctx: ServerContext) -> dict[str, Any]:
    return {
        "id": ctx.model_name,
        "object": "model",
        "created": ctx.created,
        "owned_by": "spinserve",
        "max_model_len": ctx.bounds.max_model_len,
        "spinserve": {
            "drafters": list(ctx.drafters),
            "default_drafter": ctx.drafters[0] if ctx.drafters else None,
            "num_draft_tokens": ctx.num_draft_tokens,
        },
    }


@router.get("/health", responses={503: ERRORS[503]})
async def health(ctx: Context) -> Response:
    if ctx.engine.draining:
        raise shutting_down()  # with Retry-After: a balancer tries another replica meanwhile
    if not ctx.engine.is_alive:
        raise ApiError(503, "the engine thread is not running", "service_unavailable")
    return JSONResponse({"status": "ok"})


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus(m: Metrics) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

"""Errors sent to clients, in OpenAI's shape: ``{"error": {message, type, param, code}}``.

Raised anywhere in the server layer (the handlers, the engine thread's add path) and turned
into a response by the handlers installed in `app`. No FastAPI here.
"""

from __future__ import annotations

from typing import Any

INVALID_REQUEST = "invalid_request_error"


class ApiError(Exception):
    """An error with an HTTP status and an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str = INVALID_REQUEST, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, INVALID_REQUEST, param, code)


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404, f"The model {model!r} does not exist", INVALID_REQUEST, "model", "model_not_found"
    )


def queue_full(limit: int) -> ApiError:
    return ApiError(
        429,
        f"The server is busy: {limit} requests are already waiting or running; retry later",
        "rate_limit_error",
        None,
        "queue_full",
        {"Retry-After": "1"},
    )


def shutting_down() -> ApiError:
    return ApiError(
        503,
        "The server is shutting down and admits no new requests",
        "service_unavailable",
        None,
        "shutting_down",
        {"Retry-After": "5"},
    )


def internal_error(request_id: str) -> ApiError:
    return ApiError(
        500,
        f"The engine failed while running request {request_id}; see the server log",
        "server_error",
        None,
        "engine_error",
    )

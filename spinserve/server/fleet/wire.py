"""What crosses from a replica to the ingress: plain, picklable data. No Ray import.

A replica's answer to a request is a stream: first `Admitted` (the replica and the prompt
lengths) or a `WireError` (it was refused: 400, 429...), then `WireUpdate`s. Errors are
sent as their fields, not as exceptions, so the ingress raises the very `ApiError` a single
server would have and the app's handlers give it the same shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from spinserve.server.errors import ApiError
from spinserve.server.messages import Update
from spinserve.server.params import ModelBounds
from spinserve.types.errors import InvalidRequestError


@dataclass(frozen=True)
class ModelFacts:
    """What the ingress's routes need to know of the served model (a replica tells it)."""

    model_name: str
    drafters: tuple[str, ...]
    num_draft_tokens: int
    bounds: ModelBounds
    policy: str


@dataclass(frozen=True)
class Admitted:
    replica: str
    num_prompt_tokens: list[int]


@dataclass(frozen=True)
class WireError:
    status: int
    message: str
    type: str
    param: str | None
    code: str | None
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, exc: ApiError | InvalidRequestError) -> WireError:
        if isinstance(exc, InvalidRequestError):
            exc = ApiError(400, str(exc), param=exc.param)
        return cls(
            exc.status, exc.message, exc.type, exc.param, exc.code, tuple(exc.headers.items())
        )

    def to_error(self) -> ApiError:
        return ApiError(
            self.status, self.message, self.type, self.param, self.code, dict(self.headers)
        )


@dataclass(frozen=True)
class WireUpdate:
    update: Update  # with ``error`` left out
    error: WireError | None = None

    @classmethod
    def of(cls, update: Update) -> WireUpdate:
        if update.error is None:
            return cls(update)
        return cls(dataclasses.replace(update, error=None), WireError.of(update.error))

    def to_update(self) -> Update:
        if self.error is None:
            return self.update
        return dataclasses.replace(self.update, error=self.error.to_error())

"""`ApiKeyGate`: OpenAI's ``Authorization: Bearer <key>`` check in front of the app.

A plain ASGI middleware, so it answers before the body is read and covers every route,
unknown ones included (a client without the key learns nothing, not even which paths
exist). Open paths, as in vLLM: /health (load balancers) and /metrics (Prometheus
scrapers), plus the docs pages when they are enabled. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from spinserve.server.errors import error_body

OPEN_PATHS = frozenset({"/health", "/metrics"})


class ApiKeyGate:
    def __init__(self, app: ASGIApp, api_key: str, open_paths: Collection[str]) -> None:
        self.app = app
        self._key = api_key.encode()
        self._open = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open:
            await self.app(scope, receive, send)
            return
        token = bearer_token(dict(scope["headers"]).get(b"authorization"))
        if token is not None and hmac.compare_digest(token, self._key):
            await self.app(scope, receive, send)
            return
        message = (
            "Incorrect API key provided"
            if token is not None
            else "Missing API key: send it as 'Authorization: Bearer <key>'"
        )
        body = error_body(message, code="invalid_api_key")
        headers = {"WWW-Authenticate": "Bearer"}
        await JSONResponse(body, status_code=401, headers=headers)(scope, receive, send)


def bearer_token(header: bytes | None) -> bytes | None:
    """The key of an ``Authorization: Bearer <key>`` header (scheme in any case), or None.

    >>> bearer_token(b"Bearer sk-1"), bearer_token(b"bearer  sk-1 "), bearer_token(b"Basic x")
    (b'sk-1', b'sk-1', None)
    """
    if header is None:
        return None
    scheme, _, token = header.strip().partition(b" ")
    token = token.strip()
    return token if scheme.lower() == b"bearer" and token else None

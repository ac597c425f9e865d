"""Running an app under uvicorn with a graceful shutdown.

On SIGTERM or SIGINT uvicorn sets ``should_exit``; before it closes anything, `DrainingServer`
drains the engine (`AsyncEngine.drain`): new requests get 503, admitted ones may finish
for ``shutdown_timeout`` seconds, the rest are aborted and their streams ended. Only then
does uvicorn close the listening socket and the connections, and the lifespan stops the
engine thread. A second Ctrl-C skips the wait.
"""

from __future__ import annotations

import signal
import socket

import uvicorn
from fastapi import FastAPI

from spinserve.server.config import ServerConfig


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, shutdown_timeout: float) -> None:
        super().__init__(config)
        self._app = app
        self._shutdown_timeout = shutdown_timeout

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        engine = self._app.state.context.engine
        await engine.drain(self._shutdown_timeout, give_up=lambda: self.force_exit)
        await super().shutdown(sockets)


def make_server(app: FastAPI, config: ServerConfig) -> DrainingServer:
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=5,  # after our drain, only sending the last bytes remains
        lifespan="on",
    )
    return DrainingServer(uv_config, app, config.shutdown_timeout)


def serve(app: FastAPI, config: ServerConfig) -> None:
    """Serve until SIGTERM/SIGINT; returns after a graceful shutdown on SIGTERM."""
    server = make_server(app, config)
    # uvicorn re-raises the signal it caught once it has shut down, with the handler that
    # was in place before it started; a SIGTERM handler that does nothing makes a SIGTERM
    # shutdown a normal return (exit status 0). SIGINT still ends in KeyboardInterrupt.
    previous = signal.signal(signal.SIGTERM, _ignore)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ignore(signum: int, frame: object) -> None:
    pass

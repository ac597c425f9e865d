"""Settings of the HTTP server (engine settings live in `spinserve.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens and how much it admits.

    ``max_queue`` bounds the requests (each of a request's ``n`` choices counts) admitted and
    not yet finished, waiting or running; past it new requests get 429. On SIGTERM the server
    stops admitting (503), lets running requests finish for up to ``shutdown_timeout``
    seconds, aborts the rest, and exits.
    """

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=8000, metadata={"help": "port to listen on (0: any free port)"})
    max_queue: int = field(
        default=256, metadata={"help": "most requests waiting or running; more get 429"}
    )
    shutdown_timeout: float = field(
        default=30.0,
        metadata={"help": "seconds running requests may take to finish after SIGTERM"},
    )
    served_model_name: str | None = field(
        default=None, metadata={"help": "model id clients send (default: the --model value)"}
    )
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be >= 0, got {self.shutdown_timeout}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(
                f"log_level must be debug, info, warning or error, got {self.log_level!r}"
            )

"""Settings of the HTTP server (engine settings live in `spinserve.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens, whom it serves and how much it admits.

    ``max_queue`` bounds the requests (each of a request's ``n`` choices counts) admitted and
    not yet finished, waiting or running; past it new requests get 429. On SIGTERM the server
    stops admitting (503), lets running requests finish for up to ``shutdown_timeout``
    seconds, aborts the rest, and exits. With ``api_key`` set every route but /health,
    /metrics (and the docs pages, when enabled) wants ``Authorization: Bearer <key>``.
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
    api_key: str | None = field(
        default=None,
        repr=False,  # never in a log line
        metadata={
            "help": "key clients must send as 'Authorization: Bearer KEY' on every route but "
            "/health and /metrics (default: the SPINSERVE_API_KEY environment variable; "
            "none: no check)"
        },
    )
    max_request_bytes: int = field(
        default=4 * MIB,
        metadata={"help": "largest request body in bytes; larger ones get 413 unread"},
    )
    enable_docs: bool = field(
        default=False, metadata={"help": "serve /docs, /redoc and /openapi.json"}
    )
    allow_special_tokens_in_messages: bool = field(
        default=False,
        metadata={
            "help": "read special-token text in chat messages (such as <|im_end|>) as "
            "control tokens; by default it is plain text"
        },
    )

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
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty (leave it out for no key)")
        if self.max_request_bytes < 1024:
            raise ValueError(f"max_request_bytes must be >= 1024, got {self.max_request_bytes}")

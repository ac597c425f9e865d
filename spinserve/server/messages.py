"""What passes between the event loop and the engine thread. Plain data, no torch.

The event loop sends commands (`AddCommand`, `AbortCommand`, `AbortAllCommand`, `STOP`)
through a thread-safe queue; the engine thread sends back `Update`s, one per request per
step that produced output (or ended it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import SpecParams
from spinserve.server.errors import ApiError


class ChatTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def apply_chat_template(
        self, messages: list[dict[str, str]], special_in_messages: bool = False
    ) -> list[int]: ...


@dataclass(frozen=True)
class Prompt:
    """One prompt as the client sent it: text, token ids or chat messages (exactly one).

    Turned into token ids (`tokenized`) by one of the server's tokenizer threads, before it
    reaches the engine thread: a long prompt never stalls the engine's steps. Special-token
    text in a text prompt is read as the control token (as vLLM does: the client writes
    the whole prompt); in chat messages it is plain text unless ``special_in_messages``.
    """

    text: str | None = None
    token_ids: tuple[int, ...] | None = None
    messages: tuple[dict[str, str], ...] | None = None

    def to_ids(self, tokenizer: ChatTokenizer, special_in_messages: bool = False) -> list[int]:
        if self.messages is not None:
            return tokenizer.apply_chat_template(list(self.messages), special_in_messages)
        if self.token_ids is not None:
            return list(self.token_ids)
        return tokenizer.encode(self.text or "")

    @property
    def num_chars(self) -> int:
        """Characters to tokenize (a token-id prompt has none)."""
        if self.messages is not None:
            return sum(len(text) for message in self.messages for text in message.values())
        return len(self.text or "")


@dataclass(frozen=True)
class SubRequest:
    """One engine request: a choice of an HTTP request (``index`` in its response).

    ``max_tokens`` None means "up to the context length", resolved once the prompt's length
    is known. ``arrival_time`` is when the HTTP request arrived (``time.monotonic()``).
    """

    request_id: str
    index: int
    prompt: Prompt
    params: SamplingParams
    spec: SpecParams
    max_tokens: int | None
    arrival_time: float
    prompt_param: str = "prompt"  # the request field the prompt came from, for errors
    stream: bool = False  # the client reads the text as it comes (nothing can be retried)


def tokenized(
    subrequests: list[SubRequest], tokenizer: ChatTokenizer, special_in_messages: bool = False
) -> list[SubRequest]:
    """The sub-requests with token-id prompts; each distinct prompt is encoded once."""
    encoded: dict[int, Prompt] = {}  # by identity: the n choices of a prompt share its object
    out = []
    for sub in subrequests:
        key = id(sub.prompt)
        if key not in encoded:
            ids = sub.prompt.to_ids(tokenizer, special_in_messages)
            encoded[key] = Prompt(token_ids=tuple(ids))
        out.append(dataclasses.replace(sub, prompt=encoded[key]))
    return out


@dataclass(frozen=True)
class Update:
    """A request's progress after one step: its new text, or its end (``finished``).

    ``text`` is the whole output, set only when finished. ``error`` is set when the engine
    failed the request (the response becomes a 500 or an error event).
    """

    request_id: str
    index: int
    new_text: str = ""
    num_output_tokens: int = 0
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    finished: bool = False
    finish_reason: str | None = None
    text: str = ""
    drafter: str | None = None
    speculation: dict[str, Any] | None = None
    choices: dict[str, int] | None = None  # the selection policy's drafter@k -> steps
    error: ApiError | None = None


@dataclass
class AddCommand:
    """Add these sub-requests, all or none. ``reply`` gets the prompt lengths or the error."""

    subrequests: list[SubRequest]
    sink: asyncio.Queue[Update]
    reply: concurrent.futures.Future[list[int]] = field(default_factory=concurrent.futures.Future)


@dataclass(frozen=True)
class AbortCommand:
    """Abort these requests. ``notify``: deliver their final update (else nobody listens)."""

    request_ids: tuple[str, ...]
    notify: bool = False


@dataclass(frozen=True)
class AbortAllCommand:
    """Abort every request and tell its listener (shutdown after the drain timeout)."""


STOP = object()  # the engine thread finishes its loop when it reads this

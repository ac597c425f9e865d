"""What the engine reports about a request after each step. No torch."""

from __future__ import annotations

from dataclasses import dataclass

from spinserve.speculative.stats import SpecStats


@dataclass(frozen=True)
class RequestOutput:
    """A request's progress: the delta of this step and the totals so far.

    ``token_ids`` and ``text`` are the whole output so far; ``new_*`` only this step's part.
    Times are ``time.monotonic()`` seconds.
    """

    request_id: str
    new_token_ids: list[int]
    new_text: str
    token_ids: list[int]
    text: str
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens whose KV came from the prefix cache
    finished: bool
    finish_reason: str | None
    arrival_time: float
    first_token_time: float | None
    drafter: str | None = None
    spec_stats: SpecStats | None = None
    choice_counts: dict[str, int] | None = None  # selection policy's choices: label -> steps
    error: str | None = None  # why the request failed (finish_reason "error"), for the log

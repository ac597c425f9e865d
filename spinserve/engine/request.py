"""A request's state as the engine tracks it. No torch."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from spinserve.config.sampling import SamplingParams
from spinserve.speculative.stats import SpecStats
from spinserve.types.errors import InvalidRequestError


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    STOP = "stop"  # an end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens or the context length
    ABORT = "abort"  # cancelled by the caller
    ERROR = "error"  # a computation of this request failed; the others went on


@dataclass
class Request:
    """Prompt plus output tokens, and how many of them the KV cache already holds.

    The scheduler drives ``num_computed_tokens`` up to ``num_tokens`` (vLLM's model: prefill,
    chunked prefill and decode are the same thing, catching up). ``block_ids`` is the
    request's block table in the KV cache pool.
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = field(default_factory=time.monotonic)
    output_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # of its full blocks, in order
    num_registered_blocks: int = 0  # leading blocks offered to the prefix cache
    num_cached_tokens: int | None = None  # prompt tokens found cached when first admitted
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    first_token_time: float | None = None
    drafter: str | None = None  # the drafter the request named; None: none or the policy's
    num_draft_tokens: int = 0  # k the request asked of its drafter
    policy_managed: bool = False  # the selection policy chooses drafter and k each step
    last_drafter: str | None = None  # the policy's latest choice, for reports
    choice_counts: dict[str, int] = field(default_factory=dict)  # choice label -> steps
    drafters_used: set[str] = field(default_factory=set)
    spec_stats: SpecStats = field(default_factory=SpecStats)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """Caught up but for the last sampled token: the moment to speculate."""
        return self.num_uncomputed_tokens == 1 and self.num_computed_tokens > 0

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)

    def token_slice(self, start: int, stop: int) -> list[int]:
        """Tokens ``start..stop-1`` of prompt + output, without copying the whole list."""
        p = len(self.prompt_ids)
        if stop <= p:
            return self.prompt_ids[start:stop]
        if start >= p:
            return self.output_ids[start - p : stop - p]
        return self.prompt_ids[start:] + self.output_ids[: stop - p]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_output(self, token_id: int) -> None:
        if self.first_token_time is None:
            self.first_token_time = time.monotonic()
        self.output_ids.append(token_id)

    def finish(self, reason: FinishReason) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason


def check_prompt(prompt_ids: list[int], max_model_len: int, vocab_size: int) -> None:
    """Raise InvalidRequestError unless ``prompt_ids`` can start a request."""
    if not prompt_ids:
        raise InvalidRequestError("the prompt is empty")
    if len(prompt_ids) >= max_model_len:
        raise InvalidRequestError(
            f"the prompt has {len(prompt_ids)} tokens but the context holds "
            f"{max_model_len} (prompt and output together)"
        )
    bad = next((t for t in prompt_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequestError(f"token id {bad} is outside the vocabulary")

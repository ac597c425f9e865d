"""What the scheduler hands the runner for one step: `StepBatch`, a flat list of `SeqChunk`.

The runner's answer (logits rows and the forward's time) and verification's answer are the
engine's own messages (`spinserve.engine.messages`): they hold tensors, and this layer holds
plain data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SeqChunk:
    """One request's share of a step: ``token_ids`` then ``draft_ids`` appended at ``start_pos``.

    ``token_ids`` are the request's own tokens not yet in the KV cache (a prefill chunk, or
    the last sampled token of a decode); ``draft_ids`` are draft tokens to verify after them
    (only on a chunk that reaches the end of the request's tokens). ``start_pos`` equals the
    number of the request's tokens already in the KV cache. ``block_ids`` is the request's
    block table, long enough for ``end_pos`` tokens. The last ``num_logits`` input rows get
    logits: 0 for a prefill chunk that does not reach the end of the prompt, else
    ``1 + len(draft_ids)``.

    Example: a request with a 5-token prompt and one output token, verifying drafts [7, 9]:
    ``SeqChunk("r1", [42], start_pos=5, block_ids=[3], num_logits=3, draft_ids=(7, 9))``.
    """

    request_id: str
    token_ids: list[int]
    start_pos: int
    block_ids: list[int]
    num_logits: int
    draft_ids: tuple[int, ...] = ()

    @property
    def input_ids(self) -> list[int]:
        """What the forward computes: the request's tokens, then the drafts."""
        return [*self.token_ids, *self.draft_ids] if self.draft_ids else self.token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) + len(self.draft_ids)

    @property
    def end_pos(self) -> int:
        return self.start_pos + self.num_tokens


@dataclass(frozen=True)
class StepBatch:
    """Everything the model runs in one forward: a flat, padding-free list of chunks."""

    chunks: list[SeqChunk] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def num_logits(self) -> int:
        return sum(c.num_logits for c in self.chunks)

    def __bool__(self) -> bool:
        return bool(self.chunks)

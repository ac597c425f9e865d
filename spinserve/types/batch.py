"""The two messages of one engine step: what to run (`StepBatch`) and what came back."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SeqChunk:
    """One request's share of a step: ``token_ids`` appended at ``start_pos``.

    ``start_pos`` equals the number of tokens of this request already in the KV cache.
    ``block_ids`` is the request's block table, long enough to hold
    ``start_pos + len(token_ids)`` tokens. The last ``num_logits`` rows of the chunk get
    logits (0 for a prefill chunk that does not reach the end of the prompt, 1 for a decode
    or the last prefill chunk, k+1 when verifying k draft tokens).

    Example: a request with a 5-token prompt, fully prefilled, decoding its 2nd token:
    ``SeqChunk("r1", [42], start_pos=6, block_ids=[3], num_logits=1)``.
    """

    request_id: str
    token_ids: list[int]
    start_pos: int
    block_ids: list[int]
    num_logits: int

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def end_pos(self) -> int:
        return self.start_pos + len(self.token_ids)


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

"""A small model drafting autoregressively for many sequences at once, with its own KV cache.

Both model drafters (same tokenizer as the target, or another one) run on this. It keeps, per
sequence, the token ids whose keys and values its cache holds. Each call it compares them with
the sequence it is given: the common prefix stays, the rest (rejected drafts, re-tokenized
text) is rolled back, and the new tail is fed in the first drafting round. Round r then decodes
one more token for every sequence that still wants one, so k draft tokens cost k batched
forwards of the drafter whatever the batch size.

With prefix caching its pool keeps full blocks as the target's does: a sequence it has not
seen starts from the cached blocks of its longest cached prefix (an earlier turn of the same
conversation, a shared document), so its first call does not catch up on them again. A block
is registered once every token in it is confirmed (a prefix of the sequence as the target
committed it; drafted tokens never are); should a later call roll back into a registered
block (a re-tokenized tail), the sequence lets go of that whole block and recomputes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from spinserve.config.sampling import SamplingParams
from spinserve.models.decoder import Decoder
from spinserve.ops.sampling import probabilities
from spinserve.runtime.block_manager import BlockManager
from spinserve.runtime.runner import ModelRunner
from spinserve.types.batch import SeqChunk, StepBatch


@dataclass(frozen=True)
class DraftJob:
    """Draft up to ``num_tokens`` tokens after ``token_ids`` (in the drafter's vocabulary)."""

    seq_id: str
    token_ids: Sequence[int]
    num_tokens: int
    params: SamplingParams
    generator: torch.Generator | None = None


@dataclass
class DraftOutput:
    token_ids: list[int] = field(default_factory=list)
    probs: list[torch.Tensor] = field(default_factory=list)  # each [vocab], when sampled


@dataclass
class _Seq:
    cached_ids: list[int] = field(default_factory=list)  # tokens whose KV the cache holds
    block_ids: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)  # of its leading registered blocks


def common_prefix_length(a: Sequence[int], b: Sequence[int], start: int = 0) -> int:
    """Length of the common prefix of ``a`` and ``b``, known to be at least ``start``.

    >>> common_prefix_length([1, 2, 3, 4], [1, 2, 9], 1)
    2
    """
    n = min(len(a), len(b))
    i = min(start, n)
    while i < n and a[i] == b[i]:
        i += 1
    return i


class DraftModel:
    """Batched autoregressive drafting with rollback, for one drafter model."""

    def __init__(
        self,
        model: Decoder,
        kv_cache_gib: float,
        block_size: int = 16,
        kv_cache_dtype: str = "auto",
        prefix_caching: bool = True,
    ) -> None:
        """``kv_cache_dtype``: ``auto`` (the model's dtype) or a torch dtype name."""
        kv_dtype = model.dtype if kv_cache_dtype == "auto" else getattr(torch, kv_cache_dtype)
        per_token = model.config.kv_bytes_per_token(torch.finfo(kv_dtype).bits // 8)
        num_blocks = max(1, int(kv_cache_gib * 2**30) // (per_token * block_size))
        self.model = model
        self.runner = ModelRunner(model, num_blocks, block_size, kv_dtype=kv_dtype)
        self.blocks = BlockManager(num_blocks, block_size, prefix_caching, str(kv_dtype))
        self.max_len = min(model.config.max_position_embeddings, num_blocks * block_size)
        self._seqs: dict[str, _Seq] = {}

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def release(self, seq_id: str) -> None:
        seq = self._seqs.pop(seq_id, None)
        if seq is not None:
            self.blocks.free(seq.block_ids)

    def draft(self, jobs: list[DraftJob]) -> list[DraftOutput]:
        """One `DraftOutput` per job; a job that cannot be served gets an empty draft."""
        outputs = [DraftOutput() for _ in jobs]
        active = [i for i, job in enumerate(jobs) if self._can_draft(job)]
        feeds = {i: self._sync(jobs[i]) for i in active}
        in_batch = {job.seq_id for job in jobs}
        first_round = True
        while active:
            chunks = [self._chunk(jobs[i], feeds[i], in_batch) for i in active]
            active = [i for i, c in zip(active, chunks, strict=True) if c is not None]
            if not active:
                break
            logits = self.runner.execute(StepBatch([c for c in chunks if c is not None]))
            argmax = logits.argmax(-1).tolist()  # one host transfer for the greedy rows
            for row, i in enumerate(active):
                token = self._choose(jobs[i], logits[row], argmax[row], outputs[i])
                self._seqs[jobs[i].seq_id].cached_ids.extend(feeds[i])
                if first_round:
                    self._register(jobs[i])
                feeds[i] = [token]
            first_round = False
            active = [i for i in active if self._wants_more(jobs[i], outputs[i])]
        return outputs

    def _can_draft(self, job: DraftJob) -> bool:
        return job.num_tokens > 0 and 0 < len(job.token_ids) < self.max_len

    def _sync(self, job: DraftJob) -> list[int]:
        """Roll the cache back to the longest prefix shared with ``job.token_ids``; return the
        tokens still to feed (at least the last one, whose logits start the draft)."""
        seq = self._seqs.get(job.seq_id)
        if seq is None:
            seq = self._seqs[job.seq_id] = self._start(job.token_ids)
        keep = min(common_prefix_length(seq.cached_ids, job.token_ids), len(job.token_ids) - 1)
        bs = self.blocks.block_size
        if keep < len(seq.hashes) * bs:  # never write into a registered block
            keep = keep // bs * bs
            del seq.hashes[keep // bs :]
        del seq.cached_ids[keep:]
        self.blocks.shrink(seq.block_ids, keep)
        return list(job.token_ids[keep:])

    def _register(self, job: DraftJob) -> None:
        """Offer the full blocks of ``job.token_ids`` (the committed sequence, now all in the
        cache) to the prefix cache; drafted tokens past it are never registered."""
        seq = self._seqs[job.seq_id]
        num_full = len(job.token_ids) // self.blocks.block_size
        start = len(seq.hashes)
        if self.blocks.prefix_caching and num_full > start:
            self.blocks.hashes(job.token_ids, seq.hashes, num_full)
            self.blocks.register(seq.block_ids, seq.hashes, start)

    def _start(self, token_ids: Sequence[int]) -> _Seq:
        """A new sequence, holding the cached blocks of its longest cached prefix."""
        seq = _Seq()
        if not self.blocks.prefix_caching:
            return seq
        bs = self.blocks.block_size
        hashes = self.blocks.hashes(token_ids, [], (len(token_ids) - 1) // bs)
        hits = self.blocks.cached_prefix(hashes)
        if self.blocks.num_unheld(hits) <= self.blocks.num_free_blocks:
            self.blocks.acquire(seq.block_ids, hits)
            seq.hashes = hashes[: len(hits)]
            seq.cached_ids = list(token_ids[: len(hits) * bs])
        return seq

    def _chunk(self, job: DraftJob, feed: list[int], in_batch: set[str]) -> SeqChunk | None:
        """The next round's chunk of ``job``, or None when it no longer fits."""
        seq = self._seqs[job.seq_id]
        start = len(seq.cached_ids)
        end = start + len(feed)
        if end > self.max_len:
            return None
        if not self.blocks.can_hold(seq.block_ids, end):
            self._evict(self.blocks.num_missing(seq.block_ids, end), in_batch)
            if not self.blocks.can_hold(seq.block_ids, end):
                return None
        self.blocks.grow(seq.block_ids, end)
        return SeqChunk(job.seq_id, feed, start, list(seq.block_ids), 1)

    def _evict(self, num_blocks: int, in_batch: set[str]) -> None:
        """Drop the caches of sequences outside this call, oldest first, until ``num_blocks``
        are free (they are rebuilt from their tokens if they come back)."""
        for seq_id in list(self._seqs):
            if self.blocks.num_free_blocks >= num_blocks:
                return
            if seq_id not in in_batch:
                self.release(seq_id)

    def _choose(self, job: DraftJob, logits: torch.Tensor, argmax: int, out: DraftOutput) -> int:
        """Greedy for greedy requests; otherwise sample from the request's filtered
        distribution and keep it for rejection sampling."""
        if job.params.greedy or job.generator is None:
            token = argmax
        else:
            p = job.params
            q = probabilities(
                logits[None],
                torch.tensor([p.temperature]),
                torch.tensor([p.top_k]),
                torch.tensor([p.top_p]),
            )[0]
            token = int(torch.multinomial(q, 1, generator=job.generator))
            out.probs.append(q)
        out.token_ids.append(token)
        return token

    def _wants_more(self, job: DraftJob, out: DraftOutput) -> bool:
        return len(out.token_ids) < job.num_tokens

"""Decides who runs each step and with how many tokens. No torch.

One scheduling model, no prefill/decode modes: every running request wants its
``num_uncomputed_tokens`` computed; a step serves running requests first (in arrival order),
then admits waiting ones, all under a token budget. A long prompt is therefore prefilled in
chunks between the decode steps of others. When the KV pool runs dry, the most recently
admitted request is preempted: its blocks are freed and it waits to be recomputed from its
tokens (nothing it generated is lost).

Speculation (as in vLLM v1): `schedule` takes the draft tokens proposed for decoding requests
before the step. They are scheduled as extra tokens of their request, under the same budget
(cut when it runs short), and ask for one logits row each plus one; the chunk carries them
apart from the request's own tokens (`SeqChunk.draft_ids`). After verification, `update`
rolls each request back past its rejected drafts. Drafts are never stored on a request.

Prefix caching (`spinserve.runtime.block_manager`): a request admitted with nothing computed
(new, or back after preemption) first takes the cached blocks of its longest cached prefix and
starts computing after them, so it costs only its uncached tokens in the budget and in free
blocks; at least its last token is always computed, for its logits. After each step the full
blocks of committed tokens are registered for others to reuse. Cached blocks nobody holds
count as free, so they are reclaimed before any running request is preempted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from spinserve.config.engine import SchedulerConfig
from spinserve.engine.request import Request, RequestStatus
from spinserve.runtime.block_manager import BlockManager
from spinserve.types.batch import SeqChunk, StepBatch


@dataclass
class PrefixCacheStats:
    """Prompt tokens looked up in the prefix cache and found there, since start (a request
    counts once, at its first admission)."""

    queries: int = 0
    hits: int = 0


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager) -> None:
        self.config = config
        self.blocks = blocks
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.prefix_stats = PrefixCacheStats()

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def remove(self, request: Request) -> None:
        """Take a finished or aborted request out and free its blocks."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.blocks.free(request.block_ids)

    def schedule(self, drafts: Mapping[str, Sequence[int]] | None = None) -> StepBatch:
        """This step's chunks; ``drafts``: request id -> draft tokens proposed for it."""
        budget = self.config.max_num_batched_tokens
        chunks: list[SeqChunk] = []
        num_waiting = len(self.waiting)
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_uncomputed_tokens, budget)
            draft_ids: tuple[int, ...] = ()
            if drafts and num_new == request.num_uncomputed_tokens:
                draft_ids = tuple(drafts.get(request.request_id, ())[: budget - num_new])
            if not self._make_room(request, num_new + len(draft_ids)):
                break  # `request` itself was preempted
            chunks.append(self._chunk(request, num_new, draft_ids))
            budget -= num_new + len(draft_ids)
            i += 1
        # A step that had to preempt admits nobody: the blocks it freed are for the running.
        if len(self.waiting) == num_waiting:
            self._admit(budget, chunks)
        return StepBatch(chunks)

    def _admit(self, budget: int, chunks: list[SeqChunk]) -> None:
        """Admit waiting requests in arrival order while the budget, the pool and
        ``max_num_seqs`` allow. A request whose next uncached block a running prefill is
        computing right now waits a step rather than compute it a second time (the second
        question on a document arriving with the first takes the document from the cache)."""
        if not self.waiting:
            return
        computing = self._blocks_in_flight()
        deferred: list[Request] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            hits = self._cached_prefix(request)
            if self._would_duplicate(request, hits, computing):
                deferred.append(self.waiting.popleft())
                continue
            num_cached = request.num_computed_tokens or len(hits) * self.blocks.block_size
            num_new = min(request.num_tokens - num_cached, budget)
            needed = self.blocks.num_missing(hits, num_cached + num_new)
            if needed + self.blocks.num_unheld(hits) > self.blocks.num_free_blocks:
                break
            self.waiting.popleft()
            if hits:
                self.blocks.acquire(request.block_ids, hits)
                request.num_computed_tokens = num_cached
                request.num_registered_blocks = len(hits)
            self._count_lookup(request, num_cached)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            chunks.append(self._chunk(request, num_new))
            budget -= num_new
            if self.blocks.prefix_caching:
                computing |= self._uncomputed_blocks(request)
        self.waiting.extendleft(reversed(deferred))

    def _blocks_in_flight(self) -> set[bytes]:
        """Hashes of the full prompt blocks running requests have yet to compute."""
        if not self.blocks.prefix_caching:
            return set()
        found: set[bytes] = set()
        for request in self.running:
            found |= self._uncomputed_blocks(request)
        return found

    def _uncomputed_blocks(self, request: Request) -> set[bytes]:
        bs = self.blocks.block_size
        num_full = request.num_prompt_tokens // bs
        first = request.num_computed_tokens // bs
        if first >= num_full:
            return set()
        hashes = self.blocks.hashes(request.prompt_ids, request.block_hashes, num_full)
        return set(hashes[first:num_full])

    def _would_duplicate(self, request: Request, hits: list[int], computing: set[bytes]) -> bool:
        """Whether ``request``'s first block to compute is one a running request computes."""
        if not computing or request.num_computed_tokens:
            return False
        usable = (request.num_tokens - 1) // self.blocks.block_size  # see `_cached_prefix`
        nxt = len(hits)
        return nxt < usable and request.block_hashes[nxt] in computing

    def _cached_prefix(self, request: Request) -> list[int]:
        """Cached blocks ``request`` can start from (not yet taken): none unless nothing of it
        is computed; never all its tokens, since the last one must run for its logits."""
        if not self.blocks.prefix_caching or request.num_computed_tokens:
            return []
        bs = self.blocks.block_size
        tokens = request.token_slice(0, request.num_tokens)
        hashes = self.blocks.hashes(tokens, request.block_hashes, request.num_tokens // bs)
        return self.blocks.cached_prefix(hashes[: (request.num_tokens - 1) // bs])

    def _count_lookup(self, request: Request, num_cached: int) -> None:
        if request.num_cached_tokens is not None:
            return  # back after preemption: its prompt was counted when it first came
        request.num_cached_tokens = min(num_cached, request.num_prompt_tokens)
        if self.blocks.prefix_caching:
            self.prefix_stats.queries += request.num_prompt_tokens
            self.prefix_stats.hits += request.num_cached_tokens

    def _make_room(self, request: Request, num_new: int) -> bool:
        """Preempt from the back until ``request`` fits; False if it had to go itself."""
        while not self.blocks.can_hold(request.block_ids, request.num_computed_tokens + num_new):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.blocks.free(request.block_ids)
        request.num_computed_tokens = 0
        request.num_registered_blocks = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)

    def _chunk(self, request: Request, num_new: int, draft_ids: tuple[int, ...] = ()) -> SeqChunk:
        start = request.num_computed_tokens
        self.blocks.grow(request.block_ids, start + num_new + len(draft_ids))
        reaches_end = start + num_new == request.num_tokens
        return SeqChunk(
            request_id=request.request_id,
            token_ids=request.token_slice(start, start + num_new),
            start_pos=start,
            block_ids=list(request.block_ids),
            num_logits=1 + len(draft_ids) if reaches_end else 0,
            draft_ids=draft_ids,
        )

    def update(self, batch: StepBatch, num_rejected: Mapping[str, int] | None = None) -> None:
        """Record that the batch's tokens are in the KV cache, except rejected drafts, which
        are rolled back (their blocks beyond the kept tokens are freed); then offer the newly
        filled blocks to the prefix cache."""
        by_id = {r.request_id: r for r in self.running}
        for chunk in batch.chunks:
            request = by_id.get(chunk.request_id)
            if request is None:
                continue
            rejected = num_rejected.get(chunk.request_id, 0) if num_rejected else 0
            request.num_computed_tokens = chunk.end_pos - rejected
            if rejected:
                self.blocks.shrink(request.block_ids, request.num_computed_tokens)
            if self.blocks.prefix_caching:
                self._register(request)

    def _register(self, request: Request) -> None:
        """Register the full blocks of ``request``'s computed tokens: they are committed
        (prompt, or output that verification kept), so their content is final. Drafts just
        accepted are computed but not yet appended to the output; their blocks wait a step."""
        computed = min(request.num_computed_tokens, request.num_tokens)
        num_full = computed // self.blocks.block_size
        start = request.num_registered_blocks
        if num_full <= start:
            return
        tokens = request.token_slice(0, num_full * self.blocks.block_size)
        hashes = self.blocks.hashes(tokens, request.block_hashes, num_full)
        self.blocks.register(request.block_ids, hashes[:num_full], start)
        request.num_registered_blocks = num_full

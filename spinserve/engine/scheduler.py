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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from spinserve.config.engine import SchedulerConfig
from spinserve.engine.request import Request, RequestStatus
from spinserve.runtime.block_manager import BlockManager
from spinserve.types.batch import SeqChunk, StepBatch


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager) -> None:
        self.config = config
        self.blocks = blocks
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

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
        preempted = len(self.waiting) != num_waiting
        while (
            not preempted
            and self.waiting
            and budget > 0
            and len(self.running) < self.config.max_num_seqs
        ):
            request = self.waiting[0]
            num_new = min(request.num_uncomputed_tokens, budget)
            if not self.blocks.can_hold(request.block_ids, request.num_computed_tokens + num_new):
                break
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            chunks.append(self._chunk(request, num_new))
            budget -= num_new
        return StepBatch(chunks)

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
        are rolled back (their blocks beyond the kept tokens are freed)."""
        by_id = {r.request_id: r for r in self.running}
        for chunk in batch.chunks:
            request = by_id.get(chunk.request_id)
            if request is None:
                continue
            rejected = num_rejected.get(chunk.request_id, 0) if num_rejected else 0
            request.num_computed_tokens = chunk.end_pos - rejected
            if rejected:
                self.blocks.shrink(request.block_ids, request.num_computed_tokens)

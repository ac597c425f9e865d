"""The values one engine step hands from stage to stage.

    proposals = speculator.propose(...)   # request id -> Proposal (drafter, draft)
    batch     = scheduler.schedule(...)   # StepBatch (spinserve.types.batch): chunks + drafts
    verified  = verify(...)               # one Verified per chunk that got logits

Nothing of a step travels on mutable fields of a request or in side tables: what the
speculator decided, what the scheduler scheduled and what verification accepted are each one
value handed to the next stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from spinserve.selection.policy import Choice
from spinserve.selection.step_gate import Lookup
from spinserve.speculative.drafter import Draft
from spinserve.speculative.verify import VerifyResult
from spinserve.types.batch import SeqChunk

EMPTY_DRAFT = Draft([])


@dataclass(frozen=True)
class Proposal:
    """One decoding request's speculation this step.

    ``choice``: the policy's (None for a request that named its drafter); ``drafter``: whose
    drafts these are (None when no drafter was called for it this step: it does not
    speculate, had no room, or its drafter failed); ``draft``: the tokens proposed, before
    the scheduler's budget may cut them; ``draft_seconds``: this request's share of its
    drafter's call (of every lookup's, when the step was gated).
    """

    request_id: str
    choice: Choice | None
    drafter: str | None = None
    draft: Draft = EMPTY_DRAFT
    draft_seconds: float = 0.0
    lookups: tuple[Lookup, ...] = ()  # every lookup's draft, when the policy gated the step


@dataclass(frozen=True)
class Verified:
    """What verification made of one chunk's logits rows: its `VerifyResult`, or the error
    that failed this request alone (``result`` None)."""

    chunk: SeqChunk
    result: VerifyResult | None
    error: str | None = None

    @property
    def request_id(self) -> str:
        return self.chunk.request_id

    @property
    def num_drafted(self) -> int:
        return len(self.chunk.draft_ids)

    @property
    def num_accepted(self) -> int:
        return self.result.num_accepted if self.result is not None else 0

    @property
    def num_rejected(self) -> int:
        return self.num_drafted - self.num_accepted

"""Verification of one step's logits rows, request by request.

Each chunk that got logits is verified against the part of its proposal the scheduler kept;
a request whose verification raises gets a `Verified` with the error instead of a result,
and the others are untouched (`spinserve.speculative.verify.verify_each`).
"""

from __future__ import annotations

import torch

from spinserve.engine.messages import Proposal, Verified
from spinserve.engine.request import Request
from spinserve.runtime.sampler import Generators
from spinserve.speculative.drafter import Draft
from spinserve.speculative.verify import verify_each
from spinserve.types.batch import StepBatch


def verify_step(
    batch: StepBatch,
    proposals: dict[str, Proposal],
    logits: torch.Tensor,  # [batch.num_logits, vocab]
    requests: dict[str, Request],
    generators: Generators,
) -> list[Verified]:
    """One `Verified` per chunk of ``batch`` that got logits, in chunk order."""
    rows = [c for c in batch.chunks if c.num_logits]
    results = verify_each(
        logits,
        [_scheduled_draft(proposals.get(c.request_id), c.draft_ids) for c in rows],
        [requests[c.request_id].params for c in rows],
        [generators.get(c.request_id) for c in rows],
    )
    return [
        Verified(c, None, why(r)) if isinstance(r, Exception) else Verified(c, r)
        for c, r in zip(rows, results, strict=True)
    ]


def _scheduled_draft(proposal: Proposal | None, draft_ids: tuple[int, ...]) -> Draft:
    """The part of a proposal's draft the scheduler kept (it may cut drafts short)."""
    if not draft_ids or proposal is None:
        return Draft([])
    probs = proposal.draft.probs
    return Draft(list(draft_ids), probs[: len(draft_ids)] if probs is not None else None)


def why(exc: BaseException) -> str:
    """An exception as one line for the log and the request's error."""
    return f"{type(exc).__name__}: {exc}"

"""Lookup drafts every step, for the policy to pick from and learn from.

For each decoding request the selection policy manages (unless it chose a model drafter for
it), every lookup drafter (n-gram, suffix: `Drafter.is_lookup`) drafts up to
`MAX_LOOKUP_DRAFT` tokens, in one batched call per drafter. A policy that gates steps
(`StepGatedPolicy`) then plays one of those drafts cut to the length it predicts pays, or
none, and after verification learns from all of them (`Speculator.observe`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

from spinserve.engine.drafter_guard import DrafterGuard
from spinserve.engine.messages import Proposal
from spinserve.engine.request import Request
from spinserve.selection.policy import (
    NO_SPECULATION,
    Choice,
    SelectionPolicy,
    StepGatedPolicy,
)
from spinserve.selection.step_gate import MAX_LOOKUP_DRAFT, Lookup
from spinserve.speculative.drafter import Draft, DraftRequest

logger = logging.getLogger("spinserve.engine")


class _Owner(Protocol):
    """What the gate reads of its `Speculator` (which it must not import: a cycle)."""

    guards: dict[str, DrafterGuard]
    policy: SelectionPolicy

    def draft_budget(self, request: Request, k: int) -> int: ...

    def call(self, name: str, requests: list[DraftRequest]) -> tuple[list[Draft] | None, float]: ...


class LookupGate:
    """Runs the lookups for the gated requests of a step and asks the policy to pick."""

    def __init__(self, speculator: _Owner) -> None:
        self.s = speculator

    def names(self) -> list[str]:
        """The lookup drafters available this step."""
        return [
            name
            for name, guard in self.s.guards.items()
            if getattr(guard.drafter, "is_lookup", False) and guard.available
        ]

    @property
    def active(self) -> bool:
        policy = self.s.policy
        return isinstance(policy, StepGatedPolicy) and policy.gates_steps and bool(self.names())

    def is_model(self, choice: Choice | None) -> bool:
        """The choice names a drafter that is not a lookup (it drafts as chosen)."""
        if choice is None or choice.drafter is None:
            return False
        return not getattr(self.s.guards[choice.drafter].drafter, "is_lookup", False)

    def gate(
        self, requests: Sequence[Request], plan: dict[str, Proposal], num_running: int
    ) -> list[tuple[str, Proposal]]:
        """Every gated request's proposal: the draft the policy plays, and all lookups."""
        lookups, seconds = self._lookups(requests)
        out = []
        for request in requests:
            rid = request.request_id
            found = lookups.get(rid, [])
            choice = self._pick(rid, found, plan[rid].choice, num_running)
            played = next((lk for lk in found if lk.drafter == choice.drafter), None)
            if played is None or choice.drafter is None:
                choice, draft = NO_SPECULATION, Draft([])
            else:
                draft = Draft(list(played.token_ids[: choice.num_draft_tokens]))
            drafter = choice.drafter if draft.token_ids else None
            proposal = Proposal(rid, choice, drafter, draft, seconds.get(rid, 0.0), tuple(found))
            out.append((rid, proposal))
        return out

    def _pick(
        self, request_id: str, lookups: list[Lookup], choice: Choice | None, num_running: int
    ) -> Choice:
        if not lookups:
            return NO_SPECULATION
        try:
            return self.s.policy.gate(  # type: ignore[attr-defined]
                request_id, lookups, choice or NO_SPECULATION, num_running
            )
        except Exception:
            logger.exception("policy %s failed to gate a step", self.s.policy.name)
            return NO_SPECULATION

    def _lookups(
        self, requests: Sequence[Request]
    ) -> tuple[dict[str, list[Lookup]], dict[str, float]]:
        """request id -> each lookup's draft; request id -> its share of the calls' seconds."""
        asks = []
        for request in requests:
            k = self.s.draft_budget(request, MAX_LOOKUP_DRAFT)
            if k > 0:
                ids = request.token_slice(0, request.num_tokens)
                asks.append(DraftRequest(request.request_id, ids, k, request.params))
        found: dict[str, list[Lookup]] = defaultdict(list)
        seconds: dict[str, float] = defaultdict(float)
        if not asks:
            return found, seconds
        for name in self.names():
            drafts, took = self.s.call(name, asks)
            if drafts is None:
                continue
            for ask, draft in zip(asks, drafts, strict=True):
                seconds[ask.request_id] += took / len(asks)
                if draft.token_ids:
                    found[ask.request_id].append(_lookup(name, draft, ask.num_draft_tokens))
        return found, seconds


def _lookup(name: str, draft: Draft, k: int) -> Lookup:
    token_ids = tuple(draft.token_ids[:k])
    scores = tuple(draft.scores[: len(token_ids)]) if draft.scores else ()
    return Lookup(name, token_ids, scores + (0.0,) * (len(token_ids) - len(scores)))

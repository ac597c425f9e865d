"""Speculation for one step: choose a drafter and k per request, draft, learn from the outcome.

Per step the engine asks `Speculator.propose` for the drafts of its decoding requests (a
`Proposal` each: the drafter, its tokens and its share of the drafter's call) and hands the
verified outcome back to `observe`. A request that named its drafter keeps it; the selection
policy chooses for the others, step by step. Drafters are called through `DrafterGuard`, so a
drafter that fails costs its requests their drafts for the step and nothing else.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence

from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import NO_DRAFTER, SpecParams, unknown_drafter
from spinserve.engine.compute_lane import ComputeLane
from spinserve.engine.drafter_guard import DrafterGuard
from spinserve.engine.lookup_gate import LookupGate
from spinserve.engine.messages import Proposal, Verified
from spinserve.engine.request import Request
from spinserve.selection.policy import (
    NO_SPECULATION,
    Choice,
    Feedback,
    LoadView,
    RequestView,
    SelectionPolicy,
    StepTiming,
)
from spinserve.speculative.drafter import Draft, Drafter, DraftRequest
from spinserve.speculative.stats import SpecStats
from spinserve.types.errors import InvalidRequestError

logger = logging.getLogger("spinserve.engine")


class Speculator:
    """Holds the drafters, the selection policy and the speculation statistics."""

    def __init__(
        self,
        drafters: dict[str, Drafter],
        policy: SelectionPolicy,
        vocab_size: int,
        max_model_len: int,
        draft_timeout_s: float,
        lane: ComputeLane,
    ) -> None:
        """``lane``: where the drafters run (the engine's model work, all on one thread)."""
        self.guards = {
            name: DrafterGuard(d, vocab_size, draft_timeout_s, lane) for name, d in drafters.items()
        }
        self.policy = policy
        self.max_model_len = max_model_len
        self.stats: dict[str, SpecStats] = {name: SpecStats() for name in drafters}
        self.choice_counts: dict[str, int] = defaultdict(int)
        self.lookups = LookupGate(self)

    def replace_drafter(self, name: str, drafter: Drafter) -> None:
        old = self.guards[name]
        old.close()
        self.guards[name] = DrafterGuard(drafter, old.vocab_size, old.timeout_s, old.lane)

    @property
    def drafter_names(self) -> list[str]:
        return list(self.guards)

    def resolve(
        self, spec: SpecParams, params: SamplingParams, default_k: int
    ) -> tuple[str | None, int, bool]:
        """(drafter, k, left to the policy) of a new request.

        A request that names no drafter is left to the selection policy, step by step, unless
        it asks for k = 0 (no speculation) or is a seeded sample: a seeded sample replays only
        with the same drafts every time, and the policy adapts to what other requests taught
        it, so it gets the first drafter."""
        names = self.drafter_names
        name, k = spec.drafter, spec.num_draft_tokens
        if name is None and params.seed is not None and not params.greedy:
            name = names[0] if names else NO_DRAFTER
        if name is None and k is not None and k > 0:
            raise InvalidRequestError(
                "num_draft_tokens needs a drafter to ask them of (drafter: NAME)",
                "num_draft_tokens",
            )
        if name is None:
            return None, 0, bool(names) and k is None
        if (why := unknown_drafter(name, names)) is not None:
            raise InvalidRequestError(why, "drafter")
        if name == NO_DRAFTER or k == 0:
            return None, 0, False
        return name, default_k if k is None else k, False

    def propose(self, running: Sequence[Request], num_waiting: int) -> dict[str, Proposal]:
        """request id -> `Proposal` for every decoding request of ``running``."""
        decoding = [r for r in running if r.is_decoding]
        if not decoding:
            return {}
        plan = self._plan(decoding, LoadView(len(running), num_waiting))
        gated = self._gated(decoding, plan)
        groups: dict[str, list[DraftRequest]] = defaultdict(list)
        for request in decoding:
            if request.request_id in gated:
                continue
            choice = plan[request.request_id].choice
            drafter = choice.drafter if choice is not None else request.drafter
            k = self._draft_budget(request, choice)
            if drafter is not None and k > 0:
                groups[drafter].append(
                    DraftRequest(
                        request.request_id,
                        request.token_slice(0, request.num_tokens),
                        k,
                        request.params,
                    )
                )
        for name, draft_requests in groups.items():
            plan.update(self._draft(name, draft_requests, plan))
        if gated:
            plan.update(self.lookups.gate(list(gated.values()), plan, len(running)))
        self._count(decoding, plan)
        return plan

    def _plan(self, decoding: list[Request], load: LoadView) -> dict[str, Proposal]:
        """Each request's drafter for the step: its own, or the policy's choice."""
        managed = [r for r in decoding if r.policy_managed]
        choices = self._choose(managed, load) if managed else []
        plan = {r.request_id: Proposal(r.request_id, None, None) for r in decoding}
        for request, choice in zip(managed, choices, strict=True):
            plan[request.request_id] = Proposal(request.request_id, choice, None)
        return plan

    def _gated(self, decoding: list[Request], plan: dict[str, Proposal]) -> dict[str, Request]:
        """The requests whose draft the policy picks from every lookup's, step by step: those
        it manages, unless it chose a model drafter for them."""
        if not self.lookups.active:
            return {}
        return {
            r.request_id: r
            for r in decoding
            if r.policy_managed and not self.lookups.is_model(plan[r.request_id].choice)
        }

    def _count(self, decoding: list[Request], plan: dict[str, Proposal]) -> None:
        """Count the policy's choices as played (after the gate)."""
        for request in decoding:
            choice = plan[request.request_id].choice
            if not request.policy_managed or choice is None:
                continue
            request.choice_counts[choice.label] = request.choice_counts.get(choice.label, 0) + 1
            request.last_drafter = choice.drafter
            self.choice_counts[choice.label] += 1
            if choice.drafter is not None:
                request.drafters_used.add(choice.drafter)

    def _choose(self, managed: list[Request], load: LoadView) -> list[Choice]:
        """The policy's choices; no speculation this step if the policy fails."""
        views = [
            RequestView(r.request_id, r.num_prompt_tokens, r.num_output_tokens) for r in managed
        ]
        try:
            choices = self.policy.choose(views, load)
            if len(choices) != len(managed):
                raise ValueError(f"{len(choices)} choices for {len(managed)} requests")
        except Exception:
            logger.exception(
                "selection policy %s failed; no speculation this step", self.policy.name
            )
            return [NO_SPECULATION] * len(managed)
        return [
            c if c.drafter is None or c.drafter in self.guards else NO_SPECULATION for c in choices
        ]

    def _draft_budget(self, request: Request, choice: Choice | None) -> int:
        """k for this step: the request's or the policy's, never past max_tokens or the context."""
        k = choice.num_draft_tokens if choice is not None else request.num_draft_tokens
        return self.draft_budget(request, k)

    def draft_budget(self, request: Request, k: int) -> int:
        """``k``, cut to what max_tokens and the context leave room for."""
        room_output = request.params.max_tokens - request.num_output_tokens - 1
        room_context = self.max_model_len - request.num_tokens - 1
        return max(0, min(k, room_output, room_context))

    def _draft(
        self, name: str, requests: list[DraftRequest], plan: dict[str, Proposal]
    ) -> Iterable[tuple[str, Proposal]]:
        """One batched call of drafter ``name``; nothing when it failed."""
        drafts, seconds = self.call(name, requests)
        if drafts is None:
            return ()
        share = seconds / len(requests)
        out = []
        for request, draft in zip(requests, drafts, strict=True):
            old = plan[request.request_id]
            cut = draft.token_ids[: request.num_draft_tokens]
            probs = draft.probs[: len(cut)] if draft.probs is not None else None
            proposal = Proposal(old.request_id, old.choice, name, Draft(cut, probs), share)
            out.append((request.request_id, proposal))
        return out

    def call(self, name: str, requests: list[DraftRequest]) -> tuple[list[Draft] | None, float]:
        """Drafter ``name``'s drafts for ``requests`` (None: it failed) and the call's seconds,
        both counted in its statistics (a failed call's time was spent too)."""
        guard = self.guards[name]
        start = time.perf_counter()
        drafts = guard.propose(requests)
        seconds = time.perf_counter() - start
        self.stats[name].num_failed_calls = guard.num_failures
        self.stats[name].draft_seconds += seconds
        return drafts, seconds

    def observe(
        self,
        requests: dict[str, Request],
        proposals: dict[str, Proposal],
        outcomes: Sequence[Verified],
        timing: StepTiming,
    ) -> None:
        """Record each request's outcome and tell the policy about the requests it chose for."""
        feedback = []
        for outcome in outcomes:
            proposal = proposals.get(outcome.request_id)
            request = requests.get(outcome.request_id)
            if proposal is None or request is None or outcome.result is None:
                continue
            called = proposal.drafter is not None
            if proposal.drafter is not None:
                request.spec_stats.draft_seconds += proposal.draft_seconds
                request.spec_stats.record(outcome.num_drafted, outcome.num_accepted)
                self.stats[proposal.drafter].record(outcome.num_drafted, outcome.num_accepted)
            choice = proposal.choice
            if choice is None or (choice.speculates and not called):
                continue  # not the policy's, or its drafter had no room or failed this step
            feedback.append(
                Feedback(
                    outcome.request_id,
                    choice,
                    outcome.num_drafted,
                    outcome.num_accepted,
                    proposal.draft_seconds,
                )
            )
            if proposal.lookups:
                self._learn(proposal, outcome)
        if feedback:
            try:
                self.policy.observe(feedback, timing)
            except Exception:
                logger.exception(
                    "selection policy %s failed to learn from a step", self.policy.name
                )

    def _learn(self, proposal: Proposal, outcome: Verified) -> None:
        """Score every lookup draft of a gated step against what the target emitted."""
        try:
            self.policy.learn_lookups(  # type: ignore[attr-defined]
                proposal.request_id,
                proposal.lookups,
                outcome.result.token_ids,  # type: ignore[union-attr]
                outcome.num_drafted,
                outcome.num_accepted,
            )
        except Exception:
            logger.exception("policy %s failed to learn from lookups", self.policy.name)

    def charge_verify_time(
        self, request: Request, proposal: Proposal | None, seconds: float
    ) -> None:
        """A request's share of the forward; its drafter's too when it drafted this step."""
        request.spec_stats.verify_seconds += seconds
        if proposal is not None and proposal.drafter is not None:
            self.stats[proposal.drafter].verify_seconds += seconds

    def finish(self, request: Request) -> None:
        """The request left the engine: its drafters and the policy learn from it."""
        token_ids = request.token_slice(0, request.num_tokens)
        for name in request.drafters_used:
            self.guards[name].finish(request.request_id, token_ids)
        if request.policy_managed:
            try:
                self.policy.finish(request.request_id)
            except Exception:
                logger.exception(
                    "selection policy %s: finish(%s) failed", self.policy.name, request.request_id
                )

    def failures(self) -> dict[str, int]:
        """Failed calls per drafter since start."""
        return {name: guard.num_failures for name, guard in self.guards.items()}

    def close(self) -> None:
        for guard in self.guards.values():
            guard.close()

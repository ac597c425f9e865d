"""A drafter behind a fence: its failures cost the step its drafts, never a request.

Each call runs on the engine's `ComputeLane` (the thread of all model work). A call that
raises, runs past the deadline or returns drafts that verification could not use (not token
ids, probabilities of the wrong shape, the wrong number of drafts) is dropped: its requests
go on without speculation for that step. A draft is cut before its first token outside the
target's vocabulary (a cross-tokenizer drafter can spell such a token; the prefix before it
is still a draft).

A stalled call keeps the lane's worker it runs on (`ComputeLane.detach`; the engine goes on
on a fresh one); the drafter is skipped meanwhile, and every later call (``finish``
included) queues behind it on that worker, so the drafter's state is never touched by two
threads at once. Once they have all run, the worker ends and the drafter is back on the lane.
After `MAX_CONSECUTIVE_FAILURES` failures in a row the drafter is disabled for good, with one
log line. No lock is needed: only the engine's thread calls a guard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from spinserve.engine.compute_lane import ComputeLane, LaneWorker
from spinserve.speculative.drafter import Draft, Drafter, DraftRequest

logger = logging.getLogger("spinserve.engine")

MAX_CONSECUTIVE_FAILURES = 3


class DrafterGuard:
    """Calls one drafter on the compute lane with a deadline; counts and contains failures."""

    def __init__(
        self, drafter: Drafter, vocab_size: int, timeout_s: float, lane: ComputeLane
    ) -> None:
        self.drafter = drafter
        self.name = drafter.name
        self.vocab_size = vocab_size
        self.timeout_s = timeout_s
        self.num_failures = 0  # since start, for /metrics
        self.num_consecutive_failures = 0
        self.disabled = False
        self.lane = lane
        self._stalled: LaneWorker | None = None  # the worker left to an overrunning call
        self._last: Future[Any] | None = None  # the last call queued on that worker

    @property
    def available(self) -> bool:
        """Not disabled, and not still busy with a call that ran past its deadline (or the
        calls queued behind it)."""
        if self._stalled is not None and self._last is not None and self._last.done():
            self._stalled.stop()
            self._stalled = self._last = None
        return not self.disabled and self._stalled is None

    def propose(self, requests: list[DraftRequest]) -> list[Draft] | None:
        """One `Draft` per request, or None when the drafter is unavailable or failed."""
        if not self.available:
            return None
        future = self._submit(self.drafter.propose, requests)
        try:
            drafts = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            self._stalled, self._last = self.lane.detach(), future
            return self.note_failure(f"no drafts within {self.timeout_s:g} s")
        except Exception as exc:
            return self.note_failure(f"raised {type(exc).__name__}: {exc}")
        problem = _check(drafts, requests, self.vocab_size)
        if problem is not None:
            return self.note_failure(problem)
        self.num_consecutive_failures = 0
        return [_in_vocabulary(d, self.vocab_size) for d in drafts]

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` where the drafter's calls run and wait for it without a deadline
        (start-up measurements, which must see the drafter alone)."""
        if self._stalled is None:
            return self.lane.run(fn)
        return self._submit(fn).result()

    def finish(self, request_id: str, token_ids: Sequence[int]) -> None:
        """Tell the drafter a request ended; queued, not awaited (a stalled drafter must not
        hold up the request's retirement)."""
        if not self.disabled:
            self._submit(self._finish_quietly, request_id, token_ids)

    def close(self) -> None:
        """Nothing of the lane is the guard's to end but a stalled worker, once it is done."""
        if self._stalled is not None:
            self._stalled.stop()

    def _finish_quietly(self, request_id: str, token_ids: Sequence[int]) -> None:
        try:
            self.drafter.finish(request_id, token_ids)
        except Exception:
            logger.exception("drafter %s: finish(%s) failed", self.name, request_id)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """On the lane; behind the stalled call while there is one."""
        if self._stalled is None:
            return self.lane.submit(fn, *args)
        self._last = self._stalled.submit(fn, *args)
        return self._last

    def note_failure(self, why: str) -> None:
        """Count a failed call (log the first, disable after too many in a row)."""
        self.num_failures += 1
        self.num_consecutive_failures += 1
        if self.num_failures == 1:
            logger.warning(
                "drafter %s failed (%s); its requests go on without its drafts", self.name, why
            )
        if self.num_consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            self.disabled = True
            logger.error(
                "drafter %s disabled after %d failures in a row (last: %s)",
                self.name,
                self.num_consecutive_failures,
                why,
            )
        return None


def _check(drafts: Any, requests: list[DraftRequest], vocab_size: int) -> str | None:
    """Why ``drafts`` cannot be verified, or None."""
    if not isinstance(drafts, list) or len(drafts) != len(requests):
        count = len(drafts) if isinstance(drafts, list) else type(drafts).__name__
        return f"returned {count} drafts for {len(requests)} requests"
    for draft in drafts:
        if not isinstance(draft, Draft) or not all(isinstance(t, int) for t in draft.token_ids):
            return "returned something other than drafts of token ids"
        probs = draft.probs
        if probs is not None and tuple(probs.shape) != (len(draft.token_ids), vocab_size):
            return f"draft probabilities {tuple(probs.shape)} are not [{len(draft)}, {vocab_size}]"
    return None


def _in_vocabulary(draft: Draft, vocab_size: int) -> Draft:
    """``draft`` cut before its first token outside [0, vocab_size)."""
    for i, token in enumerate(draft.token_ids):
        if not 0 <= token < vocab_size:
            return Draft(draft.token_ids[:i], draft.probs[:i] if draft.probs is not None else None)
    return draft

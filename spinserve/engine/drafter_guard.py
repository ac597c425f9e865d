"""A drafter behind a fence: its failures cost the step its drafts, never a request.

Each drafter runs on a worker thread of its own. A call that raises, runs past the deadline
or returns drafts that verification could not use (not token ids, probabilities of the wrong
shape, the wrong number of drafts) is dropped: its requests go on without speculation for
that step. A draft is cut before its first token outside the target's vocabulary (a
cross-tokenizer drafter can spell such a token; the prefix before it is still a draft).

A stalled call keeps its worker until it returns; the drafter is skipped meanwhile, and every
later call (``finish`` included) queues behind it on the same thread, so the drafter's state
is never touched by two threads at once. After `MAX_CONSECUTIVE_FAILURES` failures in a row
the drafter is disabled for good, with one log line. No lock is needed: only the engine's
thread calls a guard.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from spinserve.speculative.drafter import Draft, Drafter, DraftRequest

logger = logging.getLogger("spinserve.engine")

MAX_CONSECUTIVE_FAILURES = 3
_STOP = object()  # sentinel that ends a worker


class DrafterGuard:
    """Calls one drafter on its worker thread with a deadline; counts and contains failures."""

    def __init__(self, drafter: Drafter, vocab_size: int, timeout_s: float) -> None:
        self.drafter = drafter
        self.name = drafter.name
        self.vocab_size = vocab_size
        self.timeout_s = timeout_s
        self.num_failures = 0  # since start, for /metrics
        self.num_consecutive_failures = 0
        self.disabled = False
        self._pending: Future[Any] | None = None  # a call that ran past its deadline
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._worker = threading.Thread(
            target=_work, args=(self._jobs,), name=f"spinserve-drafter-{self.name}", daemon=True
        )
        self._worker.start()

    @property
    def available(self) -> bool:
        """Not disabled, and not still busy with a call that ran past its deadline."""
        if self._pending is not None and self._pending.done():
            self._pending = None
        return not self.disabled and self._pending is None

    def propose(self, requests: list[DraftRequest]) -> list[Draft] | None:
        """One `Draft` per request, or None when the drafter is unavailable or failed."""
        if not self.available:
            return None
        future = self._submit(self.drafter.propose, requests)
        try:
            drafts = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            self._pending = future
            return self.note_failure(f"no drafts within {self.timeout_s:g} s")
        except Exception as exc:
            return self.note_failure(f"raised {type(exc).__name__}: {exc}")
        problem = _check(drafts, requests, self.vocab_size)
        if problem is not None:
            return self.note_failure(problem)
        self.num_consecutive_failures = 0
        return [_in_vocabulary(d, self.vocab_size) for d in drafts]

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the worker and wait for it without a deadline (start-up measurements,
        which must see the drafter alone)."""
        return self._submit(fn).result()

    def finish(self, request_id: str, token_ids: Sequence[int]) -> None:
        """Tell the drafter a request ended; queued, not awaited (a stalled drafter must not
        hold up the request's retirement)."""
        if not self.disabled:
            self._submit(self._finish_quietly, request_id, token_ids)

    def close(self) -> None:
        self._jobs.put(_STOP)

    def _finish_quietly(self, request_id: str, token_ids: Sequence[int]) -> None:
        try:
            self.drafter.finish(request_id, token_ids)
        except Exception:
            logger.exception("drafter %s: finish(%s) failed", self.name, request_id)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, fn, args))
        return future

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


def _work(jobs: queue.SimpleQueue[Any]) -> None:
    while (job := jobs.get()) is not _STOP:
        future, fn, args = job
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to the caller, who decides
            future.set_exception(exc)


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

"""The one thread that runs an engine's model work.

Target forwards with their verification, every drafter call and the start-up measurements
all run, in the order they are asked for, on the lane's worker thread. The engine's own
thread (a server's engine thread, a script's main thread) only schedules and waits. On a CPU
this keeps a single OpenMP worker pool in the process (`runtime.threads` says why that
matters: a forward in a second thread's pool ran 1.15x slower, a drafting round 2x).

A drafter call that overruns its deadline keeps the worker it runs on: `detach` hands that
worker over to the stalled drafter and starts a fresh one for everything else, so a stalled
drafter costs its own drafts and never the engine's progress (the process then holds two
pools, slower, until the stalled call returns and its worker ends).
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import torch

from spinserve.runtime.threads import release_openmp_workers

T = TypeVar("T")
_STOP = object()  # sentinel that ends a worker


class LaneWorker:
    """Runs submitted calls one at a time, in order, on a thread of its own.

    The thread ends after ``idle_s`` without work, letting go of its OpenMP pool, and the
    next call starts a new one (~0.1 ms): an idle engine holds no thread, and an engine
    nobody closed holds one at most ``idle_s`` after its last call."""

    def __init__(self, num_threads: int, name: str, idle_s: float = 1.0) -> None:
        self._num_threads, self._name, self._idle_s = num_threads, name, idle_s
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders "start a thread" against "the thread ends"
        self._thread: threading.Thread | None = None

    @property
    def is_current_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            self._jobs.put((future, fn, args))
            if self._thread is None:
                self._start()
        return future

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread once the calls already submitted have run."""
        with self._lock:
            if self._thread is not None:
                self._jobs.put(_STOP)

    def stop_and_wait(self, timeout_s: float = 5.0) -> None:
        """`stop`, then wait (a while) for the thread to end: a thread that still holds an
        OpenMP pool when the interpreter exits can abort the process."""
        thread = self._thread
        self.stop()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _work(self) -> None:
        torch.set_num_threads(self._num_threads)  # a new thread starts from OpenMP's default
        try:
            while (job := self._next()) is not _STOP:
                future, fn, args = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the caller, who decides
                    future.set_exception(exc)
        finally:
            release_openmp_workers()
            with self._lock:  # calls submitted after a stop get a thread of their own
                if self._thread is threading.current_thread():
                    self._thread = None
                    if not self._jobs.empty():
                        self._start()

    def _next(self) -> Any:
        """The next call; `_STOP` when stopped or idle too long (the thread then ends)."""
        try:
            return self._jobs.get(timeout=self._idle_s)
        except queue.Empty:
            return _STOP


class ComputeLane:
    """Runs an engine's model work on one worker thread (see the module docstring)."""

    def __init__(self, num_threads: int | None = None, name: str = "spinserve-compute") -> None:
        """``num_threads``: the worker's torch threads (default: the creating thread's)."""
        self._num_threads = num_threads or torch.get_num_threads()
        self._name = name
        self._worker = LaneWorker(self._num_threads, name)
        # The models were loaded on this thread: its pool would be a second one.
        release_openmp_workers()
        self._finalizer = self._stop_when_dropped()

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the worker; waits for it without a deadline."""
        if self._worker.is_current_thread:  # already on the lane
            return fn(*args)
        return self._worker.submit(fn, *args).result()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """``fn(*args)`` queued on the worker; the caller waits as long as it likes."""
        return self._worker.submit(fn, *args)

    def detach(self) -> LaneWorker:
        """Leave the current worker to the call that overran on it and return it (its owner
        stops it once that call is over); later work goes to a fresh worker."""
        stalled = self._worker
        self._finalizer.detach()  # its owner stops it
        self._worker = LaneWorker(self._num_threads, self._name)
        self._finalizer = self._stop_when_dropped()
        return stalled

    def close(self) -> None:
        """End the worker after what was already submitted, and wait for it."""
        self._finalizer()

    def _stop_when_dropped(self) -> weakref.finalize:
        """Stop the worker when the lane is garbage (an engine nobody closed) or the
        interpreter exits."""
        return weakref.finalize(self, LaneWorker.stop_and_wait, self._worker)

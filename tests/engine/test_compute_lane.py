"""All of an engine's model work runs on one thread, so the process keeps one OpenMP pool.

What the lane is for is speed (`runtime.threads`); what is tested here is the invariant that
gives it (the target's forwards and every drafter's calls on the lane's single thread, none
on the caller's), that a thread's OpenMP workers really go when it lets go of them, and that
a stalled call leaves the lane usable.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from spinserve.config.engine import EngineConfig
from spinserve.config.sampling import SamplingParams
from spinserve.config.speculative import SpecParams, SpeculativeConfig
from spinserve.engine.builder import build_engine
from spinserve.engine.compute_lane import ComputeLane, LaneWorker
from spinserve.runtime.threads import release_openmp_workers
from spinserve.speculative.cross_tokenizer import CrossTokenizerDrafter
from spinserve.speculative.model_drafter import ModelDrafter

GREEDY = SamplingParams(max_tokens=10, ignore_eos=True)


class ThreadLog:
    """Wraps a callable and records the thread of every call."""

    def __init__(self, fn) -> None:
        self.fn, self.threads = fn, []

    def __call__(self, *args, **kwargs):
        self.threads.append(threading.get_ident())
        return self.fn(*args, **kwargs)


def test_target_and_drafters_run_on_the_lane_thread_only(tiny_loaded, tiny_drafters):
    target = tiny_loaded["llama"]
    same = ModelDrafter("same", target, target.tokenizer, target.config.vocab_size, 0.01)
    cross = CrossTokenizerDrafter("cross", tiny_drafters["cross"], target.tokenizer, 0.01)
    engine = build_engine(
        target, EngineConfig(speculative=SpeculativeConfig()), {"same": same, "cross": cross}
    )
    logs = [ThreadLog(engine.runner.execute)] + [
        ThreadLog(d._model.runner.execute) for d in (same, cross)
    ]
    engine.runner.execute = logs[0]
    same._model.runner.execute, cross._model.runner.execute = logs[1], logs[2]
    prompts = [[5, 6, 7, 8] * 4, [9, 10, 11] * 5]
    outs = engine.generate(prompts, GREEDY, [SpecParams("same", 3), SpecParams("cross", 3)])
    engine.close()
    assert all(len(o.token_ids) == 10 for o in outs)
    assert outs[0].spec_stats.num_accepted_tokens > 0  # the drafter really drafted
    assert all(log.threads for log in logs)
    threads = {t for log in logs for t in log.threads}
    assert len(threads) == 1
    assert threads != {threading.get_ident()}


_PR_SET_NAME = 15  # prctl: name the calling OS thread (threads it starts inherit it)


def _threads_named(name: str) -> int:
    count = 0
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            count += Path(f"/proc/self/task/{task}/comm").read_text().strip() == name
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_a_thread_lets_go_of_its_openmp_workers():
    """A parallel loop on a fresh thread starts that thread's pool (its workers carry the
    thread's OS name); releasing the pool ends them."""
    name = b"omp-probe"
    counts = {}

    def work() -> None:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name, 0, 0, 0)
        torch.set_num_threads(2)
        counts["before"] = _threads_named(name.decode())
        torch.ones(4_000_000).sin_()  # big enough for a parallel loop
        counts["during"] = _threads_named(name.decode())
        counts["released"] = release_openmp_workers()
        counts["after"] = _threads_named(name.decode())

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if not counts["released"]:
        pytest.skip("this torch has no libgomp to ask")
    assert counts["before"] == 1
    assert counts["during"] == 2
    assert counts["after"] == 1


def test_a_stalled_call_keeps_its_worker_and_the_lane_goes_on():
    lane = ComputeLane(num_threads=1)
    gate = threading.Event()
    first = lane.run(threading.get_ident)
    stalled_call = lane.submit(gate.wait, 5)
    stalled = lane.detach()
    fresh = lane.run(threading.get_ident)
    assert fresh != first
    assert not stalled_call.done()
    behind = stalled.submit(threading.get_ident)  # queued behind the stalled call
    gate.set()
    assert stalled_call.result(timeout=5) is True
    assert behind.result(timeout=5) == first
    stalled.stop()
    assert lane.run(lambda: 2 + 2) == 4
    lane.close()


def test_run_on_the_lane_itself_does_not_wait_for_itself():
    lane = ComputeLane(num_threads=1)
    assert lane.run(lambda: lane.run(lambda: "inner")) == "inner"
    lane.close()


def test_an_idle_worker_ends_its_thread_and_the_next_call_starts_one():
    worker = LaneWorker(num_threads=1, name="lane-test", idle_s=0.05)
    first = worker.submit(threading.get_ident).result(timeout=5)
    deadline = time.monotonic() + 5
    while _alive(first) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(first)
    assert worker.submit(lambda: 6 * 7).result(timeout=5) == 42


def test_a_call_after_stop_still_runs():
    worker = LaneWorker(num_threads=1, name="lane-test")
    worker.submit(time.sleep, 0.05)
    worker.stop()
    assert worker.submit(lambda: "after").result(timeout=5) == "after"
    worker.stop_and_wait()


def _alive(ident: int) -> bool:
    return any(t.ident == ident for t in threading.enumerate())

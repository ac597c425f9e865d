"""The scheduler on hand-built requests, no model: budgets, chunking, admission, preemption.

`Sim.step` is `LLMEngine.step` without the model: schedule, `update` (the engine calls it right
after the forward), then one output token for every chunk that asked for logits. Steps are
summarised as ``(request_id, start_pos, num_tokens, num_logits)`` per chunk.
"""

from __future__ import annotations

import random

import pytest

from spinserve.config.engine import SchedulerConfig
from spinserve.config.sampling import SamplingParams
from spinserve.engine.request import FinishReason, Request, RequestStatus
from spinserve.engine.scheduler import Scheduler
from spinserve.runtime.block_manager import BlockManager, blocks_for
from spinserve.types.batch import StepBatch

BLOCK_SIZE = 4
OUTPUT_TOKEN = 7

Summary = list[tuple[str, int, int, int]]


def make_request(request_id: str, num_prompt_tokens: int) -> Request:
    return Request(request_id, list(range(100, 100 + num_prompt_tokens)), SamplingParams())


class Sim:
    def __init__(self, num_blocks: int = 64, budget: int = 256, max_num_seqs: int = 16) -> None:
        self.blocks = BlockManager(num_blocks, BLOCK_SIZE)
        config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget)
        self.scheduler = Scheduler(config, self.blocks)
        self.requests: dict[str, Request] = {}

    def add(self, **prompt_lengths: int) -> None:
        for request_id, n in prompt_lengths.items():
            self.requests[request_id] = make_request(request_id, n)
            self.scheduler.add(self.requests[request_id])

    def step(self) -> Summary:
        batch = self.scheduler.schedule()
        self.scheduler.update(batch)
        for chunk in batch.chunks:
            if chunk.num_logits:
                self.requests[chunk.request_id].append_output(OUTPUT_TOKEN)
        return summarize(batch)


def summarize(batch: StepBatch) -> Summary:
    return [(c.request_id, c.start_pos, c.num_tokens, c.num_logits) for c in batch.chunks]


@pytest.mark.parametrize(
    ("config", "prompts", "steps"),
    [
        pytest.param(
            dict(budget=8),
            dict(a=3, b=4, c=5),
            [
                [("a", 0, 3, 1), ("b", 0, 4, 1), ("c", 0, 1, 0)],
                [("a", 3, 1, 1), ("b", 4, 1, 1), ("c", 1, 4, 1)],
                [("a", 4, 1, 1), ("b", 5, 1, 1), ("c", 5, 1, 1)],
            ],
            id="running-first-then-fifo-admission",
        ),
        pytest.param(
            dict(budget=4),
            dict(a=10),
            [
                [("a", 0, 4, 0)],
                [("a", 4, 4, 0)],
                [("a", 8, 2, 1)],
                [("a", 10, 1, 1)],
            ],
            id="chunked-prefill-logits-only-at-the-end",
        ),
        pytest.param(
            dict(budget=4),
            dict(a=2, b=9),
            [
                [("a", 0, 2, 1), ("b", 0, 2, 0)],
                [("a", 2, 1, 1), ("b", 2, 3, 0)],
                [("a", 3, 1, 1), ("b", 5, 3, 0)],
                [("a", 4, 1, 1), ("b", 8, 1, 1)],
                [("a", 5, 1, 1), ("b", 9, 1, 1)],
            ],
            id="long-prefill-between-decodes",
        ),
        pytest.param(
            dict(budget=5),
            dict(a=3, b=7),
            [
                [("a", 0, 3, 1), ("b", 0, 2, 0)],
                [("a", 3, 1, 1), ("b", 2, 4, 0)],
                [("a", 4, 1, 1), ("b", 6, 1, 1)],
                [("a", 5, 1, 1), ("b", 7, 1, 1)],
            ],
            id="admission-gets-the-leftover-budget",
        ),
        pytest.param(
            dict(budget=2),
            dict(a=1, b=1, c=1),
            [
                [("a", 0, 1, 1), ("b", 0, 1, 1)],
                [("a", 1, 1, 1), ("b", 1, 1, 1)],
            ],
            id="no-budget-left-for-waiting",
        ),
        pytest.param(
            dict(max_num_seqs=2),
            dict(a=1, b=1, c=1),
            [
                [("a", 0, 1, 1), ("b", 0, 1, 1)],
                [("a", 1, 1, 1), ("b", 1, 1, 1)],
            ],
            id="max-num-seqs-cap",
        ),
        pytest.param(
            dict(num_blocks=3),
            dict(a=8, b=8, c=1),
            [
                [("a", 0, 8, 1)],
                [("a", 8, 1, 1)],
            ],
            id="head-of-line-waits-for-blocks-and-nobody-skips-it",
        ),
    ],
)
def test_schedule_steps(config, prompts, steps):
    sim = Sim(**config)
    sim.add(**prompts)
    assert [sim.step() for _ in steps] == steps


def test_max_num_seqs_admits_next_when_one_leaves():
    sim = Sim(max_num_seqs=2)
    sim.add(a=1, b=1, c=1)
    sim.step()
    assert [r.request_id for r in sim.scheduler.waiting] == ["c"]
    sim.scheduler.remove(sim.requests["a"])
    assert sim.step() == [("b", 1, 1, 1), ("c", 0, 1, 1)]


def test_chunk_carries_tokens_and_block_table():
    sim = Sim(budget=3)
    sim.add(a=5)
    batch = sim.scheduler.schedule()
    (chunk,) = batch.chunks
    assert chunk.token_ids == [100, 101, 102]
    assert chunk.block_ids == [0]
    assert sim.requests["a"].status is RequestStatus.RUNNING
    sim.scheduler.update(batch)
    (chunk,) = sim.scheduler.schedule().chunks
    assert chunk.token_ids == [103, 104]
    assert chunk.block_ids == [0, 1]


def test_update_advances_num_computed_tokens():
    sim = Sim(budget=6)
    sim.add(a=4, b=9)
    batch = sim.scheduler.schedule()
    assert [sim.requests[r].num_computed_tokens for r in "ab"] == [0, 0]  # not before update
    sim.scheduler.update(batch)
    assert [sim.requests[r].num_computed_tokens for r in "ab"] == [4, 2]
    assert [sim.requests[r].num_uncomputed_tokens for r in "ab"] == [0, 7]


def test_update_skips_requests_removed_after_scheduling():
    sim = Sim()
    sim.add(a=3, b=3)
    batch = sim.scheduler.schedule()
    sim.scheduler.remove(sim.requests["a"])
    sim.scheduler.update(batch)
    assert sim.requests["a"].num_computed_tokens == 0
    assert sim.requests["b"].num_computed_tokens == 3


def test_preempted_request_is_the_last_admitted_and_keeps_its_output():
    """3 blocks: a and b fill two; a's decode takes the third, b's has nowhere to go.

    b goes back in front of d, which has waited all along (max_num_seqs=2).
    """
    sim = Sim(num_blocks=3, budget=16, max_num_seqs=2)
    sim.add(a=4, b=4, d=1)
    assert sim.step() == [("a", 0, 4, 1), ("b", 0, 4, 1)]
    assert sim.step() == [("a", 4, 1, 1)]
    a, b, d = sim.requests["a"], sim.requests["b"], sim.requests["d"]
    assert list(sim.scheduler.waiting) == [b, d]
    assert sim.scheduler.running == [a]
    assert (b.status, b.num_computed_tokens, b.block_ids, b.num_preemptions) == (
        RequestStatus.WAITING,
        0,
        [],
        1,
    )
    assert b.output_ids == [OUTPUT_TOKEN]
    assert a.num_preemptions == 0
    assert sim.blocks.num_free_blocks == 1


def test_preemption_takes_victims_from_the_back_and_keeps_fifo_order():
    sim = Sim(num_blocks=3, budget=16)
    sim.add(a=4, b=4, c=3)
    assert sim.step() == [("a", 0, 4, 1), ("b", 0, 4, 1), ("c", 0, 3, 1)]
    # a needs a 2nd block: c goes; b then needs one too and nobody is behind it: b goes.
    assert sim.step() == [("a", 4, 1, 1)]
    assert [r.request_id for r in sim.scheduler.waiting] == ["b", "c"]
    assert [sim.requests[r].num_preemptions for r in "abc"] == [0, 1, 1]
    sim.scheduler.remove(sim.requests["a"])
    # Recomputed from scratch, generated token included, and the chunk reaching the end samples.
    batch = sim.scheduler.schedule()
    assert summarize(batch) == [("b", 0, 5, 1), ("c", 0, 4, 1)]
    assert batch.chunks[0].token_ids == [100, 101, 102, 103, OUTPUT_TOKEN]
    assert batch.chunks[1].token_ids == [100, 101, 102, OUTPUT_TOKEN]


@pytest.mark.parametrize(
    ("config", "prompts", "num_steps", "preempted"),
    [
        # Alone and outgrowing the pool: it preempts itself (and, re-admitted at once,
        # restarts from 0 forever). LLMEngine caps max_model_len at the pool, so only the
        # scheduler alone can get here.
        pytest.param(dict(num_blocks=2, budget=4), dict(a=12), 3, "a", id="alone"),
        # Reachable through LLMEngine: b is preempted for a's decode and re-admitted in the
        # same step with a fresh 3-token chunk, then preempted again on the next steps.
        pytest.param(dict(num_blocks=3, budget=4), dict(a=2, b=10), 4, "b", id="victim"),
    ],
)
def test_preempted_request_waits_out_the_step(config, prompts, num_steps, preempted):
    sim = Sim(**config)
    sim.add(**prompts)
    for _ in range(num_steps - 1):
        sim.step()
    last = sim.step()
    request = sim.requests[preempted]
    assert request.num_preemptions == 1
    assert preempted not in [rid for rid, *_ in last]
    assert request.status is RequestStatus.WAITING
    assert request.block_ids == []


def test_alone_request_outgrowing_the_pool_preempts_itself():
    """What holds today whatever happens after the preemption: its KV is dropped and redone."""
    sim = Sim(num_blocks=2, budget=4)
    sim.add(a=12)
    assert sim.step() == [("a", 0, 4, 0)]
    assert sim.step() == [("a", 4, 4, 0)]
    third = sim.step()
    a = sim.requests["a"]
    assert a.num_preemptions == 1
    assert all(start == 0 for _, start, _, _ in third)
    assert len(a.block_ids) <= 2
    assert sim.blocks.num_free_blocks + len(a.block_ids) == 2


@pytest.mark.parametrize(
    ("where", "num_free_after"),
    [
        pytest.param("running", 8, id="running"),
        pytest.param("waiting", 8, id="waiting-never-admitted"),
        pytest.param("preempted", 3, id="waiting-after-preemption"),
    ],
)
def test_remove_frees_blocks(where, num_free_after):
    num_blocks = 3 if where == "preempted" else 8
    sim = Sim(num_blocks=num_blocks, budget=16, max_num_seqs=1 if where == "waiting" else 16)
    sim.add(a=4, b=4)
    sim.step()
    if where == "preempted":
        sim.step()  # b is preempted, see test_preempted_request_is_the_last_admitted...
    victim = sim.requests["b" if where != "running" else "a"]
    sim.scheduler.remove(victim)
    sim.scheduler.remove(sim.requests["a" if where != "running" else "b"])
    assert victim.block_ids == []
    assert sim.scheduler.num_unfinished == 0
    assert sim.blocks.num_free_blocks == num_free_after


def test_num_unfinished_counts_waiting_and_running():
    sim = Sim(max_num_seqs=1)
    sim.add(a=1, b=1, c=1)
    assert sim.scheduler.num_unfinished == 3
    sim.step()
    assert (len(sim.scheduler.running), len(sim.scheduler.waiting)) == (1, 2)
    assert sim.scheduler.num_unfinished == 3


def test_empty_scheduler_gives_an_empty_batch():
    assert not Scheduler(SchedulerConfig(), BlockManager(4, BLOCK_SIZE)).schedule()


@pytest.mark.parametrize("seed", range(6))
def test_random_workload_never_corrupts_the_kv_cache(seed):
    """A fake model writes (request, position, token) into every slot a chunk names and, when a
    chunk asks for logits, reads the request's whole context back: a block handed to two
    requests, a lost token or a wrong start position would show up as a mismatch.
    """
    rng = random.Random(seed)
    num_blocks, block_size = rng.randint(3, 10), rng.choice([1, 2, 4])
    budget, max_num_seqs = rng.randint(1, 12), rng.randint(1, 4)
    pool = num_blocks * block_size
    blocks = BlockManager(num_blocks, block_size)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs, budget), blocks)
    # As LLMEngine does: a request ends when prompt + output reach a length the pool can hold.
    max_len = {f"r{i}": rng.randint(2, pool) for i in range(12)}
    pending = [
        Request(rid, [rng.randrange(1000) for _ in range(rng.randint(1, n - 1))], SamplingParams())
        for rid, n in max_len.items()
    ]
    requests = {r.request_id: r for r in pending}
    kv: dict[int, tuple[str, int, int]] = {}
    finished = []

    def slot(chunk_blocks: list[int], pos: int) -> int:
        return chunk_blocks[pos // block_size] * block_size + pos % block_size

    for _ in range(3000):
        if pending and rng.random() < 0.4:
            scheduler.add(pending.pop(0))
        if not pending and not scheduler.num_unfinished:
            break
        batch = scheduler.schedule()
        assert batch.num_tokens <= budget
        assert len(scheduler.running) <= max_num_seqs
        for c in batch.chunks:
            r = requests[c.request_id]
            tokens = r.prompt_ids + r.output_ids
            assert c.start_pos == r.num_computed_tokens
            assert c.token_ids == tokens[c.start_pos : c.end_pos]
            assert c.num_logits == (1 if c.end_pos == len(tokens) else 0)
            assert len(c.block_ids) == blocks_for(c.end_pos, block_size)
            for pos in range(c.start_pos, c.end_pos):
                kv[slot(c.block_ids, pos)] = (r.request_id, pos, tokens[pos])
            if c.num_logits:
                for pos in range(c.end_pos):
                    assert kv[slot(c.block_ids, pos)] == (r.request_id, pos, tokens[pos])
        owned = [b for r in scheduler.running for b in r.block_ids]
        assert len(owned) == len(set(owned))
        assert blocks.num_free_blocks + len(owned) == num_blocks
        assert all(not r.block_ids and r.num_computed_tokens == 0 for r in scheduler.waiting)
        scheduler.update(batch)
        for c in batch.chunks:
            r = requests[c.request_id]
            if c.num_logits:
                r.append_output(rng.randrange(1000))
                if r.num_tokens >= max_len[r.request_id]:
                    r.finish(FinishReason.LENGTH)
                    scheduler.remove(r)
                    finished.append(r.request_id)
    assert sorted(finished) == sorted(requests)
    assert blocks.num_free_blocks == num_blocks

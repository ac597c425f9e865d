"""The KV block pool: sizes, growth with contiguity, freeing, and invariants under churn."""

from __future__ import annotations

import random

import pytest

from spinserve.runtime.block_manager import BlockManager, blocks_for


@pytest.mark.parametrize(
    ("num_tokens", "block_size", "expected"),
    [
        (0, 16, 0),
        (1, 16, 1),
        (15, 16, 1),
        (16, 16, 1),
        (17, 16, 2),
        (32, 16, 2),
        (33, 16, 3),
        (1, 1, 1),
        (7, 1, 7),
        (5, 4, 2),
    ],
)
def test_blocks_for(num_tokens, block_size, expected):
    assert blocks_for(num_tokens, block_size) == expected


def test_pool_needs_a_block():
    with pytest.raises(ValueError, match="at least one block"):
        BlockManager(0, 16)


@pytest.mark.parametrize(
    ("owned", "num_tokens", "missing"),
    [
        ([], 0, 0),
        ([], 1, 1),
        ([], 9, 3),
        ([0], 4, 0),
        ([0], 5, 1),
        ([0, 1], 5, 0),  # owning more than needed is never negative
        ([0, 1, 2], 1, 0),
    ],
)
def test_num_missing(owned, num_tokens, missing):
    bm = BlockManager(8, 4)
    assert bm.num_missing(owned, num_tokens) == missing


@pytest.mark.parametrize(
    ("num_blocks", "num_tokens", "fits"),
    [(2, 8, True), (2, 9, False), (1, 4, True), (1, 5, False), (3, 0, True)],
)
def test_can_hold(num_blocks, num_tokens, fits):
    assert BlockManager(num_blocks, 4).can_hold([], num_tokens) is fits


# Each case: a sequence of operations on named block tables, and the tables afterwards.
# ("grow", name, num_tokens) / ("shrink", name, num_tokens) / ("free", name); block_size 4.
@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        pytest.param([("grow", "a", 9)], {"a": [0, 1, 2]}, id="fresh-pool-is-contiguous"),
        pytest.param(
            [("grow", "a", 4), ("grow", "b", 4), ("grow", "a", 8)],
            {"a": [0, 2], "b": [1]},
            id="next-block-taken-falls-back-to-lowest-free",
        ),
        pytest.param(
            [("grow", "a", 4), ("grow", "b", 4), ("free", "a"), ("grow", "b", 8)],
            {"a": [], "b": [1, 2]},
            id="prefers-block-after-last-over-lower-free",
        ),
        pytest.param(
            [("grow", "a", 8), ("grow", "b", 4), ("free", "a"), ("grow", "c", 8)],
            {"a": [], "b": [2], "c": [0, 1]},
            id="new-request-reuses-lowest-run",
        ),
        pytest.param(
            [("grow", "a", 12), ("shrink", "a", 5), ("grow", "a", 12)],
            {"a": [0, 1, 2]},
            id="shrink-then-regrow-gets-same-blocks",
        ),
        pytest.param(
            [("grow", "a", 12), ("shrink", "a", 0)],
            {"a": []},
            id="shrink-to-zero-frees-all",
        ),
        pytest.param(
            [("grow", "a", 8), ("shrink", "a", 100)],
            {"a": [0, 1]},
            id="shrink-beyond-size-keeps-all",
        ),
        pytest.param(
            [("grow", "a", 4), ("grow", "a", 4), ("grow", "a", 3)],
            {"a": [0]},
            id="grow-to-held-size-is-noop",
        ),
        pytest.param(
            [("grow", "a", 4), ("grow", "b", 28)],
            {"a": [0], "b": [1, 2, 3, 4, 5, 6, 7]},
            id="fills-the-pool-exactly",
        ),
        pytest.param(
            [("grow", "a", 28), ("grow", "b", 4)],
            {"a": [0, 1, 2, 3, 4, 5, 6], "b": [7]},
            id="last-block-of-pool",
        ),
        pytest.param(
            [("grow", "a", 32), ("free", "a"), ("grow", "b", 4), ("grow", "c", 4)],
            {"a": [], "b": [0], "c": [1]},
            id="after-full-free-lowest-first",
        ),
    ],
)
def test_grow_shrink_free(ops, expected):
    bm = BlockManager(8, 4)
    tables: dict[str, list[int]] = {name: [] for name in expected}
    for op, name, *args in ops:
        if op == "grow":
            bm.grow(tables[name], *args)
        elif op == "shrink":
            bm.shrink(tables[name], *args)
        else:
            bm.free(tables[name])
    assert tables == expected
    assert bm.num_free_blocks == 8 - sum(len(t) for t in tables.values())


def test_grow_out_of_blocks_raises_and_changes_nothing():
    bm = BlockManager(4, 4)
    a = []
    bm.grow(a, 12)
    with pytest.raises(RuntimeError, match="out of KV blocks: need 2, have 1"):
        bm.grow(a, 20)
    assert a == [0, 1, 2]
    assert bm.num_free_blocks == 1


@pytest.mark.parametrize(
    "bad_release",
    [
        pytest.param([5], id="never-allocated"),
        pytest.param([0, 0], id="same-block-twice-in-one-call"),
        pytest.param([1, 2, 1], id="repeat-later-in-call"),
    ],
)
def test_double_free_raises(bad_release):
    bm = BlockManager(8, 4)
    a = []
    bm.grow(a, 12)  # owns 0, 1, 2
    with pytest.raises(RuntimeError, match="freed twice"):
        bm.release(bad_release)


def test_free_twice_raises():
    bm = BlockManager(8, 4)
    a = []
    bm.grow(a, 4)
    copy = list(a)
    bm.free(a)
    assert a == []
    with pytest.raises(RuntimeError, match="block 0 freed twice"):
        bm.free(copy)


@pytest.mark.parametrize(
    ("num_blocks", "tokens_per_request", "usage"),
    [
        (4, [], 0.0),
        (4, [4], 0.25),
        (4, [4, 8], 0.75),
        (4, [16], 1.0),
        (10, [1, 1, 1], 0.3),
    ],
)
def test_usage(num_blocks, tokens_per_request, usage):
    bm = BlockManager(num_blocks, 4)
    for n in tokens_per_request:
        bm.grow([], n)
    assert bm.usage == pytest.approx(usage)


def _check_invariants(bm: BlockManager, tables: list[list[int]]) -> None:
    owned = [b for t in tables for b in t]
    assert len(owned) == len(set(owned)), "a block is owned twice"
    assert all(0 <= b < bm.num_blocks for b in owned)
    assert bm.num_free_blocks + len(owned) == bm.num_blocks
    # The heap is compacted so stale ids never pile up without bound.
    assert len(bm._heap) <= 2 * bm.num_blocks


@pytest.mark.parametrize("seed", range(8))
def test_random_churn_keeps_ownership_exclusive(seed):
    """Thousands of grow/shrink/free steps: every block has at most one owner, none is lost."""
    rng = random.Random(seed)
    num_blocks, block_size = rng.choice([(1, 4), (7, 2), (32, 4), (64, 1)])
    bm = BlockManager(num_blocks, block_size)
    tables: list[list[int]] = [[] for _ in range(rng.randint(1, 6))]
    num_tokens = [0] * len(tables)
    for _ in range(3000):
        i = rng.randrange(len(tables))
        action = rng.random()
        if action < 0.6:
            target = num_tokens[i] + rng.randint(1, 3 * block_size)
            if bm.can_hold(tables[i], target):
                bm.grow(tables[i], target)
                num_tokens[i] = target
            else:
                with pytest.raises(RuntimeError, match="out of KV blocks"):
                    bm.grow(tables[i], target)
        elif action < 0.8:
            num_tokens[i] = rng.randint(0, num_tokens[i])
            bm.shrink(tables[i], num_tokens[i])
        else:
            bm.free(tables[i])
            num_tokens[i] = 0
        assert len(tables[i]) == blocks_for(num_tokens[i], block_size)
        _check_invariants(bm, tables)
    for t in tables:
        bm.free(t)
    assert bm.num_free_blocks == num_blocks
    assert bm.usage == 0.0


def test_compaction_under_preferred_takes():
    """Preferred takes leave stale heap ids; after compaction allocation is still lowest-first."""
    bm = BlockManager(4, 1)
    a: list[int] = []
    for _ in range(50):  # each cycle takes 0..3 by preference and pushes 4 ids back
        bm.grow(a, 4)
        assert a == [0, 1, 2, 3]
        bm.free(a)
        assert len(bm._heap) <= 2 * bm.num_blocks
    b: list[int] = []
    c: list[int] = []
    bm.grow(b, 1)
    bm.grow(c, 1)
    bm.grow(b, 2)
    assert (b, c) == ([0, 2], [1])

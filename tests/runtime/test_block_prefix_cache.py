"""The block pool's prefix cache: hash chains, shared blocks, reference counts, LRU reuse."""

from __future__ import annotations

import random

import pytest

from spinserve.runtime.block_manager import BlockManager, block_hashes, chain_root

BS = 4


def pool(num_blocks: int = 8) -> BlockManager:
    return BlockManager(num_blocks, BS, prefix_caching=True, salt="test")


def computed(bm: BlockManager, tokens: list[int]) -> tuple[list[int], list[bytes]]:
    """A sequence whose tokens were computed into fresh blocks and registered."""
    blocks: list[int] = []
    bm.grow(blocks, len(tokens))
    hashes = bm.hashes(tokens, [], len(tokens) // BS)
    bm.register(blocks, hashes)
    return blocks, hashes


def test_a_hash_names_the_whole_prefix_not_just_the_block():
    root = chain_root("m")
    a = block_hashes(root, [1, 2, 3, 4, 5, 6, 7, 8], BS, [], 2)
    b = block_hashes(root, [9, 2, 3, 4, 5, 6, 7, 8], BS, [], 2)
    c = block_hashes(root, [1, 2, 3, 4, 5, 6, 7, 8, 9], BS, [], 2)
    assert a == c
    assert a[0] != b[0] and a[1] != b[1]  # same second block, other first block
    assert block_hashes(chain_root("other model"), [1, 2, 3, 4], BS, [], 1)[0] != a[0]


def test_hashes_extend_in_place_and_refuse_a_partial_block():
    hashes = block_hashes(chain_root("m"), list(range(12)), BS, [], 1)
    assert block_hashes(chain_root("m"), list(range(12)), BS, hashes, 3) is hashes
    assert hashes == block_hashes(chain_root("m"), list(range(12)), BS, [], 3)
    with pytest.raises(ValueError, match="not full"):
        block_hashes(chain_root("m"), list(range(6)), BS, [], 2)


def test_a_released_sequence_is_found_again_and_shared():
    bm = pool()
    tokens = list(range(10))  # two full blocks and a partial one
    blocks, _hashes = computed(bm, tokens)
    bm.free(list(blocks))
    assert bm.num_free_blocks == 8  # cached blocks nobody holds count as free
    assert bm.num_cached_blocks == 2
    hits = bm.cached_prefix(bm.hashes(tokens, [], 2))
    assert hits == blocks[:2]
    a: list[int] = []
    b: list[int] = []
    bm.acquire(a, hits)
    bm.acquire(b, hits)
    assert a == b == blocks[:2]
    assert bm.num_free_blocks == 6
    bm.free(a)
    assert bm.num_free_blocks == 6  # b still holds them
    bm.free(b)
    assert bm.num_free_blocks == 8


def test_lookup_stops_at_the_first_miss():
    bm = pool()
    blocks, _ = computed(bm, list(range(12)))
    other = [*list(range(4)), 99, 99, 99, 99, *list(range(8, 12))]
    assert bm.cached_prefix(bm.hashes(other, [], 3)) == blocks[:1]


def test_only_cached_blocks_nobody_holds_are_reclaimed_least_recent_first():
    bm = pool(4)
    first, _ = computed(bm, [1] * 4)
    second, _ = computed(bm, [2] * 4)
    bm.free(list(first))
    bm.free(list(second))
    held: list[int] = []
    bm.grow(held, 2 * BS)  # the two plain free blocks
    assert bm.num_cached_blocks == 2
    bm.grow(held, 3 * BS)  # now one cached block must go: the one released first
    assert bm.cached_prefix(bm.hashes([1] * 4, [], 1)) == []
    assert bm.cached_prefix(bm.hashes([2] * 4, [], 1)) == second
    assert held[-1] == first[0]


def test_a_second_copy_of_a_block_stays_private():
    bm = pool()
    a, _ = computed(bm, [5] * 8)
    b, _ = computed(bm, [5] * 8)  # computed concurrently: same content, other blocks
    assert bm.num_cached_blocks == 2
    bm.free(b)
    assert bm.num_free_blocks == 8 - 2  # b's blocks went straight back to free
    bm.free(list(a))
    assert bm.cached_prefix(bm.hashes([5] * 8, [], 2)) == a


def test_register_is_a_no_op_without_prefix_caching():
    bm = BlockManager(8, BS)
    blocks, hashes = computed(bm, list(range(8)))
    assert bm.num_cached_blocks == 0
    assert bm.cached_prefix(hashes) == []
    bm.free(blocks)


def test_errors_name_the_misuse():
    bm = pool()
    blocks, _ = computed(bm, list(range(8)))
    with pytest.raises(RuntimeError, match="not cached"):
        bm.acquire([], [7])
    bm.free(list(blocks))
    with pytest.raises(RuntimeError, match="freed twice"):
        bm.release(blocks[:1])


def test_clear_cache_frees_only_unheld_blocks():
    bm = pool()
    _kept, _ = computed(bm, [1] * 8)
    dropped, _ = computed(bm, [2] * 8)
    bm.free(dropped)
    assert bm.clear_cache() == 2
    assert bm.num_cached_blocks == 2  # still held, still registered
    assert bm.cached_prefix(bm.hashes([2] * 8, [], 2)) == []


def test_random_workload_keeps_the_books(seed=0):
    """Sequences of a few shared prefixes come and go; the pool never hands out a block
    someone holds, and every block ends free or cached."""
    rng = random.Random(seed)
    bm = pool(16)
    prefixes = [[rng.randrange(50) for _ in range(8)] for _ in range(3)]
    live: list[list[int]] = []
    for _ in range(400):
        if live and (rng.random() < 0.45 or bm.num_free_blocks < 4):
            bm.free(live.pop(rng.randrange(len(live))))
            continue
        tokens = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(1, 9))]
        hashes = bm.hashes(tokens, [], len(tokens) // BS)
        hits = bm.cached_prefix(hashes[: (len(tokens) - 1) // BS])
        if bm.num_unheld(hits) + bm.num_missing(hits, len(tokens)) > bm.num_free_blocks:
            continue
        blocks: list[int] = []
        bm.acquire(blocks, hits)
        bm.grow(blocks, len(tokens))
        bm.register(blocks, hashes, len(hits))
        live.append(blocks)
        held = [b for seq in live for b in seq]
        owners = {b: sum(1 for seq in live if b in seq) for b in set(held)}
        assert all(bm._refs[b] == n for b, n in owners.items())
        assert bm.num_free_blocks == 16 - len(owners)
    for blocks in live:
        bm.free(blocks)
    assert bm.num_free_blocks == 16
    assert bm.usage == 0.0

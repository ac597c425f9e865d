"""Suffix decoding: the trie's counts, lookup and continuation by tables; the drafter by
behaviour (learning, eviction, confidence, bounds, determinism)."""

from __future__ import annotations

import doctest
import random

import pytest

from spinserve.config.sampling import SamplingParams
from spinserve.speculative import suffix
from spinserve.speculative.drafter import DraftRequest
from spinserve.speculative.suffix import (
    NO_NODE,
    ROOT,
    RequestIndex,
    SuffixConfig,
    SuffixDrafter,
    SuffixTrie,
    greedy_continuation,
    longest_match,
    propose_from,
)


def dump(trie: SuffixTrie) -> dict[tuple[int, ...], tuple[int, int]]:
    """path -> (count, num_continued), root included as ()."""
    out: dict[tuple[int, ...], tuple[int, int]] = {}

    def walk(node: int, path: tuple[int, ...]) -> None:
        out[path] = (trie.count(node), trie.num_continued(node))
        for child in trie.children(node):
            walk(child, (*path, trie.token(child)))

    walk(ROOT, ())
    return out


def trie_of(depth: int, *seqs: list[int]) -> SuffixTrie:
    trie = SuffixTrie(depth)
    for seq in seqs:
        trie.insert(seq)
    return trie


# --- SuffixTrie ------------------------------------------------------------------------------

INSERT_CASES = [
    # depth, sequence, expected {path: (count, num_continued)}
    (2, [], {(): (0, 0)}),
    (2, [5], {(): (1, 1), (5,): (1, 0)}),
    (
        2,
        [1, 2, 1, 2],
        {(): (4, 4), (1,): (2, 2), (1, 2): (2, 0), (2,): (2, 1), (2, 1): (1, 0)},
    ),
    (
        3,
        [7, 7, 7],
        {(): (3, 3), (7,): (3, 2), (7, 7): (2, 1), (7, 7, 7): (1, 0)},
    ),
]


@pytest.mark.parametrize("depth, seq, expected", INSERT_CASES)
def test_insert_counts_every_window(depth, seq, expected):
    trie = trie_of(depth, seq)
    assert dump(trie) == expected
    assert trie.num_nodes == len(expected) - 1


@pytest.mark.parametrize(
    "keep, drop",
    [([1, 2, 3], [1, 2, 4]), ([], [9, 9, 9, 9]), ([1, 2, 1, 2], [2, 1, 2, 1, 3]), ([5], [5])],
)
def test_remove_is_the_inverse_of_insert(keep, drop):
    trie = trie_of(3, keep, drop)
    trie.remove(drop)
    assert dump(trie) == dump(trie_of(3, keep))
    assert trie.num_nodes == trie_of(3, keep).num_nodes == len(dump(trie)) - 1


def test_random_inserts_and_removals_keep_counts_best_children_and_ids():
    for seed in range(30):
        rng = random.Random(seed)
        trie, held, peak = SuffixTrie(4), [], 0
        for _ in range(30):
            if held and rng.random() < 0.4:
                trie.remove(held.pop(rng.randrange(len(held))))
            else:
                held.append([rng.randrange(4) for _ in range(rng.randint(0, 8))])
                trie.insert(held[-1])
            assert dump(trie) == dump(trie_of(4, *held)), seed
            peak = max(peak, trie.num_nodes)
            for node in [ROOT, *trie._edges.values()]:
                children = trie.children(node)
                expected = min(
                    children, key=lambda c: (-trie.count(c), trie.token(c)), default=NO_NODE
                )
                assert trie.best_child(node) == expected
        for seq in held:
            trie.remove(seq)
        assert trie.num_nodes == 0
        assert trie.num_slots == 1 + peak  # freed ids are reused before new ones


def test_depth_must_leave_room_for_a_continuation():
    with pytest.raises(ValueError, match="depth"):
        SuffixTrie(1)


MATCH_CASES = [
    # sequences, depth, context, expected match length
    ([[1, 2, 3, 4]], 4, [9, 2, 3], 2),
    ([[1, 2, 3, 4]], 4, [1, 2, 3], 3),
    ([[1, 2, 3, 4]], 3, [1, 2, 3], 2),  # a depth-3 path has no room after 1 2 3
    ([[1, 2, 3, 4]], 4, [3, 4], 0),  # 4 ends the sequence: nothing followed it
    ([[1, 2, 3, 4]], 4, [], 0),
    ([[1, 2, 3, 4], [8, 3, 5]], 4, [8, 3], 2),
]


@pytest.mark.parametrize("seqs, depth, context, expected", MATCH_CASES)
def test_longest_match(seqs, depth, context, expected):
    match_len, node = longest_match(trie_of(depth, *seqs), context)
    assert match_len == expected
    assert (node == NO_NODE) == (expected == 0)


CONTINUATION_CASES = [
    # sequences, context, max_tokens, min_confidence, expected tokens, expected score
    ([[1, 2, 3, 4, 5]], [1], 8, 0.1, [2, 3, 4, 5], 4.0),
    ([[1, 2, 3, 4, 5]], [1], 2, 0.1, [2, 3], 2.0),
    ([[1, 2, 3, 4, 5]], [1], 0, 0.1, [], 0.0),
    # 1 -> 2 (2 of 3), then 2 -> 3 always
    ([[1, 2, 3], [1, 2, 3], [1, 9]], [1], 8, 0.5, [2, 3], 4 / 3),
    ([[1, 2, 3], [1, 2, 3], [1, 9]], [1], 8, 0.7, [], 0.0),
    # a tie goes to the smaller token id
    ([[4, 8], [4, 6]], [4], 8, 0.1, [6], 0.5),
]


@pytest.mark.parametrize("seqs, context, k, min_conf, tokens, score", CONTINUATION_CASES)
def test_greedy_continuation(seqs, context, k, min_conf, tokens, score):
    trie = trie_of(6, *seqs)
    _, node = longest_match(trie, context)
    got_tokens, path_probs = greedy_continuation(trie, node, k, min_conf)
    assert got_tokens == tokens
    assert sum(path_probs) == pytest.approx(score)
    assert path_probs == sorted(path_probs, reverse=True)  # a running product of ratios <= 1
    assert propose_from(trie, context, k, min_conf)[0] == tokens


def test_propose_from_without_a_match_is_empty():
    assert propose_from(trie_of(4, [1, 2]), [3], 4, 0.1) == ([], [])


# --- RequestIndex ----------------------------------------------------------------------------


@pytest.mark.parametrize("depth, max_tokens", [(2, 2), (3, 5), (4, 64)])
def test_request_index_equals_a_trie_of_its_window(depth, max_tokens):
    for seed in range(40):
        rng = random.Random(seed)
        seq = [rng.randrange(3) for _ in range(rng.randint(0, 30))]
        index = RequestIndex(depth, max_tokens)
        for i, token in enumerate(seq):
            index.append(token)
            window = seq[max(0, i + 1 - max_tokens) : i + 1]
            assert dump(index.trie) == dump(trie_of(depth, window)), (seed, i)


@pytest.mark.parametrize(
    "offset, indexed, token_ids, expected",
    [
        (0, [1, 2, 3], [1, 2, 3, 4], True),
        (0, [1, 2, 3], [1, 2, 3], True),
        (0, [1, 2, 3], [1, 2], False),
        (0, [1, 2, 3], [1, 2, 9, 4], False),
        (2, [3, 4], [1, 2, 3, 4, 5], True),
        (2, [3, 4], [1, 2, 3, 8], False),
    ],
)
def test_request_index_follows(offset, indexed, token_ids, expected):
    index = RequestIndex(depth=4, max_tokens=8, offset=offset)
    for token in indexed:
        index.append(token)
    assert index.follows(token_ids) is expected


# --- SuffixConfig ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_match_len": 24}, "max_match_len"),
        ({"max_match_len": 0}, "max_match_len"),
        ({"min_confidence": 0.0}, "min_confidence"),
        ({"min_confidence": 1.5}, "min_confidence"),
        ({"max_request_tokens": 8}, "max_request_tokens"),
        ({"max_sequences": 0}, "max_sequences"),
        ({"max_nodes": 1000}, "max_nodes"),
    ],
)
def test_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SuffixConfig(**kwargs)


# --- SuffixDrafter ---------------------------------------------------------------------------


def request(request_id: str, token_ids: list[int], k: int) -> DraftRequest:
    return DraftRequest(request_id, token_ids, k, SamplingParams())


def propose(drafter: SuffixDrafter, request_id: str, token_ids: list[int], k: int) -> list[int]:
    (draft,) = drafter.propose([request(request_id, token_ids, k)])
    assert draft.probs is None
    return draft.token_ids


SMALL = SuffixConfig(
    max_depth=6,
    max_match_len=3,
    max_request_tokens=64,
    max_tokens_per_sequence=16,
    max_nodes=200,
)


def test_proposes_a_repeated_phrase_after_seeing_it_once():
    drafter = SuffixDrafter()
    phrase = list(range(10, 30))
    assert propose(drafter, "r", [*phrase, 50, 51], 5) == []
    assert propose(drafter, "r", [*phrase, 50, 51, 10, 11, 12], 5) == [13, 14, 15, 16, 17]
    assert drafter.name == "suffix"


def test_learns_from_a_finished_request():
    drafter = SuffixDrafter()
    prompt, output = [1, 2, 3, 4, 5], [60, 61, 62, 63, 64, 65]
    assert propose(drafter, "a", prompt, 4) == []
    drafter.finish("a", prompt + output)
    assert drafter.num_requests == 0
    assert drafter.num_sequences == 1
    assert propose(drafter, "b", prompt, 4) == [60, 61, 62, 63]
    assert propose(drafter, "b", [*prompt, 60, 61], 3) == [62, 63, 64]


def test_memory_stays_bounded_and_evicted_sequences_are_forgotten():
    drafter = SuffixDrafter(SMALL)
    rng = random.Random(0)
    seqs = [[rng.randrange(10_000) for _ in range(16)] for _ in range(100)]
    for i, seq in enumerate(seqs):
        drafter.finish(str(i), seq)
        assert drafter.global_trie.num_nodes <= SMALL.max_nodes
        assert drafter.global_trie.num_nodes == len(dump(drafter.global_trie)) - 1
    # ids are reused: the arrays never hold more than the cap plus one sequence's nodes
    assert drafter.global_trie.num_slots <= 1 + SMALL.max_nodes + 16 * SMALL.max_depth
    assert propose(drafter, "new", seqs[-1][:3], 2) == seqs[-1][3:5]
    assert propose(drafter, "old", seqs[0][:3], 2) == []


def test_max_sequences_evicts_the_oldest():
    drafter = SuffixDrafter(SuffixConfig(max_sequences=2))
    for i, seq in enumerate([[1, 2, 3], [4, 5, 6], [7, 8, 9]]):
        drafter.finish(str(i), seq)
    assert drafter.num_sequences == 2
    assert propose(drafter, "x", [1], 2) == []
    assert propose(drafter, "y", [4], 2) == [5, 6]


@pytest.mark.parametrize(
    "min_confidence, expected",
    [(0.9, [4]), (0.6, [4, 5, 6]), (0.3, [4, 5, 6, 7])],
)
def test_confidence_threshold_shortens_ambiguous_drafts(min_confidence, expected):
    # after 1 2 3 4: 5 in 2 of 3 sequences; after 1 2 3 4 5 6: 7 in 1 of 2.
    drafter = SuffixDrafter(SuffixConfig(min_confidence=min_confidence))
    for i, seq in enumerate([[1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 8], [1, 2, 3, 4, 9]]):
        drafter.finish(str(i), seq)
    assert propose(drafter, "r", [1, 2, 3], 8) == expected


def test_own_index_wins_ties_and_global_wins_when_more_confident():
    drafter = SuffixDrafter()
    drafter.finish("old", [1, 2, 3, 40, 41, 42])
    # own history says 1 2 3 -> 8 9 10 once, as sure as the global 40 41 42: own wins the tie
    assert propose(drafter, "r", [1, 2, 3, 8, 9, 10, 1, 2, 3], 3) == [8, 9, 10]
    # own history now splits 1 2 3 -> 8 / 7; the global draft scores higher
    assert propose(drafter, "s", [1, 2, 3, 8, 9, 1, 2, 3, 7, 5, 1, 2, 3], 3) == [40, 41, 42]


def test_never_proposes_more_than_asked():
    drafter = SuffixDrafter(SMALL)
    rng = random.Random(1)
    for i in range(30):
        seq = [rng.randrange(4) for _ in range(40)]
        for k in range(0, 10):
            draft = propose(drafter, str(i), seq[: 10 + k], k)
            assert len(draft) <= min(k, SMALL.max_depth - 1)
        drafter.finish(str(i), seq)


def test_deterministic():
    def run() -> list[list[int]]:
        drafter = SuffixDrafter(SMALL)
        rng = random.Random(2)
        out = []
        for i in range(20):
            seq = [rng.randrange(5) for _ in range(30)]
            out += [propose(drafter, str(i), seq[:n], 4) for n in range(5, 30, 5)]
            drafter.finish(str(i), seq)
        return out

    assert run() == run()


def test_a_diverged_request_is_reindexed():
    fresh, reused = SuffixDrafter(), SuffixDrafter()
    propose(reused, "r", [1, 2, 3, 4, 1, 2], 3)
    for token_ids in ([7, 8, 9, 7], [7, 8, 9, 7, 8], [7, 8]):  # diverged, grown, shrunk
        assert propose(reused, "r", token_ids, 3) == propose(fresh, str(token_ids), token_ids, 3)


def test_long_requests_index_only_their_window():
    config = SuffixConfig(max_depth=4, max_match_len=2, max_request_tokens=8, max_nodes=4096)
    head, filler = [1, 2, 3], list(range(100, 120))
    assert propose(SuffixDrafter(config), "r", [*head, *filler, 1, 2], 2) == []
    assert propose(SuffixDrafter(), "r", [*head, *filler, 1, 2], 2) == [3, 100]
    # growing past the window one token at a time forgets the head too
    drafter = SuffixDrafter(config)
    for n in range(1, len(head) + len(filler) + 1):
        propose(drafter, "r", [*head, *filler][:n], 2)
    assert propose(drafter, "r", [*head, *filler, 1, 2], 2) == []


@pytest.mark.parametrize("bad", [-1, 2**31])
def test_refuses_token_ids_that_do_not_fit(bad):
    drafter = SuffixDrafter()
    with pytest.raises(ValueError, match="token ids"):
        propose(drafter, "r", [1, bad], 2)
    with pytest.raises(ValueError, match="token ids"):
        drafter.finish("r", [1, bad])


def test_docstring_examples():
    assert doctest.testmod(suffix).failed == 0

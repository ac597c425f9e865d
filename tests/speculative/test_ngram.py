"""Prompt lookup: the fast `ngram_propose` against tables and a plain reference."""

from __future__ import annotations

import doctest
import random

import pytest

from spinserve.config.sampling import SamplingParams
from spinserve.speculative import ngram
from spinserve.speculative.drafter import DraftRequest
from spinserve.speculative.ngram import NgramDrafter, ngram_propose


def reference_propose(token_ids: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    """The definition, spelled out: longest n first, then the latest earlier start."""
    num_tokens = len(token_ids)
    for n in range(max_n, min_n - 1, -1):
        suffix = token_ids[num_tokens - n :]
        for start in range(num_tokens - n - 1, -1, -1):
            if token_ids[start : start + n] == suffix:
                return token_ids[start + n : start + n + k]
    return []


# Byte patterns that straddle two 32-bit words: 0x100 is 00 01 00 00 in little-endian, which
# also appears inside 0x01000000, 0 (00 00 00 01 00 00 00 00) at byte offset 2.
STRADDLE = [0x01000000, 0, 5, 0x100]

CASES = [
    # token_ids, k, min_n, max_n, expected
    ([], 3, 1, 4, []),
    ([7], 3, 1, 4, []),
    ([1, 2, 3], 4, 1, 4, []),
    ([1, 2, 3, 4, 1, 2, 3, 9, 1, 2, 3], 3, 1, 4, [9, 1, 2]),
    ([5, 6, 7, 5, 6], 4, 1, 4, [7, 5, 6]),
    ([5, 6, 7, 5, 6], 1, 1, 4, [7]),
    ([5, 6, 7, 5, 6], 0, 1, 4, []),
    # longest n wins over a more recent shorter match
    ([1, 2, 8, 9, 2, 7, 1, 2], 2, 1, 4, [8, 9]),
    ([1, 2, 8, 9, 2, 7, 1, 2], 2, 1, 1, [7, 1]),
    # most recent occurrence of the n-gram
    ([3, 4, 3, 5, 3, 6, 3], 1, 1, 4, [6]),
    # overlapping occurrence: 1 1 1 at start 0, followed by one 1
    ([1, 1, 1, 1], 5, 1, 4, [1]),
    ([1, 1, 1, 1, 1], 5, 1, 3, [1]),
    # min_n above the only match length
    ([4, 9, 9, 4], 2, 2, 4, []),
    ([4, 9, 9, 4], 2, 1, 4, [9, 9]),
    # large ids and straddling byte patterns
    ([2**31 - 1, 150_000, 2**31 - 1], 2, 1, 4, [150_000, 2**31 - 1]),
    (STRADDLE, 2, 1, 4, []),
    ([0x100, 7, *STRADDLE], 1, 1, 4, [7]),
]


@pytest.mark.parametrize("token_ids, k, min_n, max_n, expected", CASES)
def test_ngram_propose_table(token_ids, k, min_n, max_n, expected):
    assert ngram_propose(token_ids, k, min_n, max_n) == expected
    assert reference_propose(token_ids, k, min_n, max_n) == expected
    assert ngram_propose(tuple(token_ids), k, min_n, max_n) == expected


@pytest.mark.parametrize(
    "k, min_n, max_n, message",
    [(-1, 1, 4, "num_draft_tokens"), (2, 0, 4, "min_n"), (2, 3, 2, "max_n")],
)
def test_ngram_propose_rejects_bad_arguments(k, min_n, max_n, message):
    with pytest.raises(ValueError, match=message):
        ngram_propose([1, 2, 1], k, min_n, max_n)


def test_ngram_propose_matches_reference_on_random_sequences():
    for seed in range(1500):
        rng = random.Random(seed)
        vocab = rng.randint(1, 6)
        token_ids = [rng.randrange(vocab) for _ in range(rng.randint(0, 60))]
        min_n = rng.randint(1, 3)
        max_n = rng.randint(min_n, 5)
        k = rng.randint(0, 6)
        expected = reference_propose(token_ids, k, min_n, max_n)
        assert ngram_propose(token_ids, k, min_n, max_n) == expected, (seed, token_ids)


def test_ngram_propose_matches_reference_on_straddling_ids():
    # Ids whose bytes repeat across word boundaries exercise the aligned search.
    ids = [0, 0x100, 0x10000, 0x1000000, 0x01010101, 0x01000001]
    for seed in range(300):
        rng = random.Random(seed)
        token_ids = [rng.choice(ids) for _ in range(rng.randint(0, 40))]
        assert ngram_propose(token_ids, 3, 1, 4) == reference_propose(token_ids, 3, 1, 4)


def test_docstring_examples():
    assert doctest.testmod(ngram).failed == 0


def request(request_id: str, token_ids: list[int], k: int) -> DraftRequest:
    return DraftRequest(request_id, token_ids, k, SamplingParams())


def test_drafter_maps_requests_through_the_function():
    drafter = NgramDrafter(min_n=1, max_n=3)
    seqs = [[1, 2, 3, 1, 2], [9, 8, 7], [4, 4, 4, 4]]
    drafts = drafter.propose([request(str(i), s, 2) for i, s in enumerate(seqs)])
    assert [d.token_ids for d in drafts] == [[3, 1], [], [4]]
    assert all(d.probs is None for d in drafts)
    assert drafter.name == "ngram"
    drafter.finish("0", seqs[0])  # stateless: nothing to drop
    assert drafter.propose([]) == []


def test_drafter_rejects_bad_ngram_range():
    with pytest.raises(ValueError, match="max_n"):
        NgramDrafter(min_n=3, max_n=2)

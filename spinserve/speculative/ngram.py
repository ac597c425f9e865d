"""Prompt lookup decoding: propose the tokens that followed the last n-gram's latest earlier
occurrence in the request's own sequence. No model, no state.

The longest n-gram (n from ``max_n`` down to ``min_n``) that ends the sequence and also occurs
earlier wins; among its earlier occurrences the most recent one; the draft is what followed it:

>>> ngram_propose([1, 2, 3, 4, 1, 2, 3, 9, 1, 2, 3], num_draft_tokens=3)
[9, 1, 2]
>>> ngram_propose([5, 6, 7, 5, 6], num_draft_tokens=4)  # stops at the end of the sequence
[7, 5, 6]
>>> ngram_propose([1, 2, 3], num_draft_tokens=4)  # 3 never occurred before
[]

In the first example the 3-gram ``1 2 3`` ends the sequence and occurs at positions 0 and 4;
position 4 is the more recent, and ``9 1 2`` followed it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from spinserve.speculative.drafter import Draft, DraftRequest

# Token ids are packed into 32-bit words so that `bytes.rfind` (C speed) does the scanning;
# `struct.pack` packs a list about twice as fast as `array` or numpy do.
_WORD = 4


def ngram_propose(
    token_ids: Sequence[int], num_draft_tokens: int, min_n: int = 1, max_n: int = 4
) -> list[int]:
    """Up to ``num_draft_tokens`` tokens that followed the most recent earlier occurrence of the
    longest n-gram (``min_n <= n <= max_n``) ending ``token_ids``; [] when none occurs."""
    return ngram_match(token_ids, num_draft_tokens, min_n, max_n)[0]


def ngram_match(
    token_ids: Sequence[int], num_draft_tokens: int, min_n: int = 1, max_n: int = 4
) -> tuple[list[int], int]:
    """`ngram_propose`'s tokens and the length n of the n-gram matched (0: none)."""
    _check_ngram_range(min_n, max_n)
    if num_draft_tokens < 0:
        raise ValueError(f"num_draft_tokens must be >= 0, got {num_draft_tokens}")
    num_tokens = len(token_ids)
    if num_draft_tokens == 0 or num_tokens <= min_n:
        return [], 0
    data = struct.pack(f"<{num_tokens}i", *token_ids)
    # An earlier occurrence must end before the last token, so it has a token after it.
    search_end = (num_tokens - 1) * _WORD
    for n in range(min(max_n, num_tokens - 1), min_n - 1, -1):
        start = _rfind_aligned(data, data[-n * _WORD :], search_end)
        if start >= 0:
            begin = start + n
            return list(token_ids[begin : begin + num_draft_tokens]), n
    return [], 0


def ngram_support(token_ids: Sequence[int], n: int, token: int) -> tuple[int, int]:
    """How often the last ``n`` tokens occurred earlier with a token after them, and how many
    of those occurrences ``token`` followed: the evidence behind a draft that `ngram_match`
    bases on the most recent one alone.

    >>> ngram_support([1, 2, 3, 1, 2, 4, 1, 2], 2, 4)
    (2, 1)
    """
    num_tokens = len(token_ids)
    if not 1 <= n < num_tokens:
        return 0, 0
    data = struct.pack(f"<{num_tokens}i", *token_ids)
    pattern, end = data[-n * _WORD :], (num_tokens - 1) * _WORD
    occurrences = agreeing = 0
    pos = data.find(pattern, 0, end)
    while pos >= 0:
        if pos % _WORD == 0:
            occurrences += 1
            agreeing += token_ids[pos // _WORD + n] == token
        pos = data.find(pattern, pos + 1, end)
    return occurrences, agreeing


def _rfind_aligned(data: bytes, pattern: bytes, end: int) -> int:
    """Token index of the last word-aligned occurrence of ``pattern`` in ``data[:end]``, or -1.

    A byte match that straddles token boundaries is skipped by searching again to its left."""
    pos = data.rfind(pattern, 0, end)
    while pos > 0 and pos % _WORD:
        pos = data.rfind(pattern, 0, pos + len(pattern) - 1)
    return pos // _WORD if pos >= 0 else -1


def _check_ngram_range(min_n: int, max_n: int) -> None:
    if min_n < 1:
        raise ValueError(f"min_n must be >= 1, got {min_n}")
    if max_n < min_n:
        raise ValueError(f"max_n must be >= min_n, got min_n={min_n}, max_n={max_n}")


class NgramDrafter:
    """The model-free drafter over `ngram_propose`; holds nothing between steps."""

    name = "ngram"
    is_lookup = True

    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        _check_ngram_range(min_n, max_n)
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        return [self._propose_one(r) for r in requests]

    def _propose_one(self, request: DraftRequest) -> Draft:
        token_ids, n = ngram_match(
            request.token_ids, request.num_draft_tokens, self.min_n, self.max_n
        )
        return Draft(token_ids, scores=(n / self.max_n,) * len(token_ids))

    def finish(self, request_id: str, token_ids: Sequence[int]) -> None:
        pass

"""What a lookup draft rests on, for whoever predicts which drafts pass: the n-gram's earlier
occurrences and the suffix match's length and count."""

from __future__ import annotations

from spinserve.config.sampling import SamplingParams
from spinserve.speculative.drafter import DraftRequest
from spinserve.speculative.ngram import ngram_match, ngram_support
from spinserve.speculative.suffix import SuffixDrafter


def test_ngram_support_counts_earlier_occurrences_and_agreeing_ones():
    ids = [1, 2, 3, 1, 2, 4, 1, 2, 3, 1, 2]
    draft, n = ngram_match(ids, 2)
    assert (draft, n) == ([4, 1], 4)  # "2 3 1 2" once before, followed by 4
    assert ngram_support(ids, n, draft[0]) == (1, 1)
    assert ngram_support(ids, 2, 3) == (3, 2)  # "1 2" thrice before: then 3, 4, 3
    assert ngram_support(ids, 0, 3) == ngram_support([5], 1, 5) == (0, 0)


def test_ngram_support_ignores_byte_matches_across_token_boundaries():
    # packed little-endian, 256, 0 is 00 01 00 00 00 00 00 00: the bytes of 1 (01 00 00 00)
    # at offset 1, which is no occurrence of the token
    assert ngram_support([256, 0, 1, 7, 1], 1, 7) == (1, 1)


def test_suffix_match_support_tells_a_rare_match_from_a_frequent_one():
    drafter = SuffixDrafter()
    greedy = SamplingParams(max_tokens=4)
    assert drafter.match_support("r") == ((0, 0), (0, 0))
    drafter.finish("old", [5, 6, 7] * 20)
    [draft] = drafter.propose([DraftRequest("r", [9, 5, 6], 2, greedy)])
    assert draft.token_ids == [7, 5] and draft.scores == (1.0, 1.0)
    own, seen = drafter.match_support("r")
    assert own == (0, 0)  # "5 6" was never continued in the request's own tokens
    assert seen[0] >= 2 and seen[1] == 20  # the global index saw "... 5 6" continued 20 times

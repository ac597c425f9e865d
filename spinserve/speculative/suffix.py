"""Suffix decoding (after SuffixDecoding, Oliaro et al. 2024): propose the most frequent
continuation of the context's longest matching suffix, found in an index of the request's own
tokens and of earlier requests' sequences. No model; memory is bounded.

The index is a `SuffixTrie`: every window ``token_ids[i : i + depth]`` of an indexed sequence is
a path from the root, and each node counts the occurrences of its path. For ``1 2 3 1 2 4`` with
depth 4 the node for ``1 2`` has count 2 and children ``3`` and ``4`` (count 1 each), so after
a context ending in ``1 2`` the draft is ``3`` with probability 1/2 and then ``1`` (the only
thing seen after ``1 2 3``) with probability 1/2 * 1/1:

>>> trie = SuffixTrie(depth=4)
>>> trie.insert([1, 2, 3, 1, 2, 4])
>>> match_len, node = longest_match(trie, [7, 1, 2])
>>> match_len, trie.count(node)
(2, 2)
>>> greedy_continuation(trie, node, max_tokens=4, min_confidence=0.3)
([3, 1], [0.5, 0.5])

The draft stops where the product of the probabilities would fall below ``min_confidence``,
or where the trie ends (a path holds at most ``depth`` tokens, match included). The second
value is each token's path probability under the counts (the draft's scores); their sum is
its expected number of accepted tokens under the counts, which picks between the two tries.

`SuffixDrafter` keeps two tries: one per live request over its own last ``max_request_tokens``
tokens (updated as it grows, dropped on `finish`), and one global over the last
``max_tokens_per_sequence`` tokens of each finished sequence, evicting the oldest sequences
past ``max_sequences`` or ``max_nodes``. Each trie drafts; the higher score wins, the
request's own on a tie.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from spinserve.speculative.drafter import Draft, DraftRequest
from spinserve.speculative.suffix_trie import (  # noqa: F401 (re-exported)
    NO_NODE,
    ROOT,
    SuffixTrie,
    greedy_continuation,
    longest_match,
    propose_from,
)


class RequestIndex:
    """A `SuffixTrie` over the last ``max_tokens`` tokens of one growing sequence, updated
    incrementally: each appended token extends the (at most depth - 1) windows still open, and
    once more than ``max_tokens`` are indexed the oldest window is removed.

    ``offset``: how many leading tokens of the sequence were never indexed (a request longer
    than ``max_tokens`` when first seen); ``token_ids`` holds the rest.
    """

    def __init__(self, depth: int, max_tokens: int, offset: int = 0) -> None:
        if max_tokens < depth:
            raise ValueError(f"max_tokens ({max_tokens}) must be >= depth ({depth})")
        self.trie = SuffixTrie(depth)
        self.max_tokens = max_tokens
        self.offset = offset
        self.token_ids: list[int] = []
        # Nodes of the windows that still grow, oldest window first.
        self._open: deque[int] = deque()

    @property
    def num_tokens(self) -> int:
        """Length of the sequence seen so far, unindexed head included."""
        return self.offset + len(self.token_ids)

    def append(self, token: int) -> None:
        trie = self.trie
        self._open.append(trie.open_window())
        self._open = deque(trie.step(node, token) for node in self._open)
        if len(self._open) == trie.depth:
            self._open.popleft()
        self.token_ids.append(token)
        if len(self.token_ids) > self.max_tokens:
            oldest = len(self.token_ids) - self.max_tokens - 1
            trie.remove_window(self.token_ids[oldest : oldest + trie.depth])

    def follows(self, token_ids: Sequence[int]) -> bool:
        """Whether ``token_ids`` extends what was indexed (checked on the last ``depth`` tokens:
        committed tokens never change, this only guards against a caller's mistake)."""
        end = self.num_tokens
        if len(token_ids) < end:
            return False
        start = max(self.offset, end - self.trie.depth)
        return list(token_ids[start:end]) == self.token_ids[start - self.offset :]


@dataclass(frozen=True)
class SuffixConfig:
    """Settings of `SuffixDrafter`.

    ``max_depth``: tokens on a trie path, match plus draft; ``max_match_len``: the longest
    context suffix looked up, so a draft can always reach ``max_depth - max_match_len`` tokens
    (16 = the engine's most). ``max_request_tokens``: the window of a request's own tokens
    indexed; ``max_tokens_per_sequence``: the tail of a finished sequence kept in the global
    index, which holds at most ``max_sequences`` of them and ``max_nodes`` nodes, evicting the
    oldest first.
    """

    max_depth: int = 24
    max_match_len: int = 8
    min_confidence: float = 0.1
    max_request_tokens: int = 4096
    max_tokens_per_sequence: int = 1024
    max_sequences: int = 1000
    max_nodes: int = 1_000_000

    def __post_init__(self) -> None:
        if not 1 <= self.max_match_len < self.max_depth:
            raise ValueError(
                f"need 1 <= max_match_len < max_depth, got {self.max_match_len}, {self.max_depth}"
            )
        if not 0.0 < self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in (0, 1], got {self.min_confidence}")
        if self.max_request_tokens < self.max_depth:
            raise ValueError("max_request_tokens must be >= max_depth")
        if self.max_tokens_per_sequence < 1 or self.max_sequences < 1:
            raise ValueError("max_tokens_per_sequence and max_sequences must be >= 1")
        # One sequence adds at most max_tokens_per_sequence * max_depth nodes; the cap must
        # hold the newest sequence alone, so eviction always ends with the cap respected.
        if self.max_nodes < self.max_tokens_per_sequence * self.max_depth:
            raise ValueError(
                f"max_nodes must be >= max_tokens_per_sequence * max_depth "
                f"= {self.max_tokens_per_sequence * self.max_depth}, got {self.max_nodes}"
            )


class SuffixDrafter:
    """Drafts from the request's own index and the global index of finished sequences, and
    keeps whichever draft scores higher (ties: the request's own)."""

    name = "suffix"
    is_lookup = True

    def __init__(self, config: SuffixConfig | None = None) -> None:
        self.config = config or SuffixConfig()
        self.global_trie = SuffixTrie(self.config.max_depth)
        self._sequences: deque[list[int]] = deque()  # what the global trie holds, oldest first
        self._requests: dict[str, RequestIndex] = {}

    @property
    def num_sequences(self) -> int:
        """Finished sequences in the global index."""
        return len(self._sequences)

    @property
    def num_requests(self) -> int:
        """Live requests with an index of their own."""
        return len(self._requests)

    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        return [self._propose_one(r) for r in requests]

    def _propose_one(self, request: DraftRequest) -> Draft:
        index = self._sync(request.request_id, request.token_ids)
        if request.num_draft_tokens <= 0:
            return Draft([])
        cfg = self.config
        context = index.token_ids[-cfg.max_match_len :]
        own = propose_from(index.trie, context, request.num_draft_tokens, cfg.min_confidence)
        seen = propose_from(self.global_trie, context, request.num_draft_tokens, cfg.min_confidence)
        token_ids, path_probs = own if sum(own[1]) >= sum(seen[1]) else seen
        return Draft(token_ids, scores=tuple(path_probs))

    def match_support(self, request_id: str) -> tuple[tuple[int, int], tuple[int, int]]:
        """What the last draft for ``request_id`` rests on, per index (the request's own, then
        the global one): the length of the context suffix matched and how often it was
        continued ((0, 0): no match). A path probability of 1/1 and one of 50/50 score the
        same; this tells them apart for whoever predicts which drafts pass."""
        index = self._requests.get(request_id)
        if index is None:
            return (0, 0), (0, 0)
        context = index.token_ids[-self.config.max_match_len :]
        return _support(index.trie, context), _support(self.global_trie, context)

    def _sync(self, request_id: str, token_ids: Sequence[int]) -> RequestIndex:
        """The request's index, caught up with ``token_ids`` (rebuilt if they diverged)."""
        index = self._requests.get(request_id)
        if index is None or not index.follows(token_ids):
            cfg = self.config
            offset = max(0, len(token_ids) - cfg.max_request_tokens)
            index = self._requests[request_id] = RequestIndex(
                cfg.max_depth, cfg.max_request_tokens, offset
            )
        new_token_ids = _checked(token_ids[index.num_tokens :])
        for token in new_token_ids:
            index.append(token)
        return index

    def finish(self, request_id: str, token_ids: Sequence[int]) -> None:
        self._requests.pop(request_id, None)
        tail = _checked(token_ids[-self.config.max_tokens_per_sequence :])
        if not tail:
            return
        self.global_trie.insert(tail)
        self._sequences.append(tail)
        while len(self._sequences) > 1 and (
            len(self._sequences) > self.config.max_sequences
            or self.global_trie.num_nodes > self.config.max_nodes
        ):
            self.global_trie.remove(self._sequences.popleft())


def _support(trie: SuffixTrie, context: Sequence[int]) -> tuple[int, int]:
    match_len, node = longest_match(trie, context)
    return (match_len, trie.num_continued(node)) if node != NO_NODE else (0, 0)


def _checked(token_ids: Sequence[int]) -> list[int]:
    """``token_ids`` as a list, refused if an id does not fit an edge key."""
    token_ids = list(token_ids)
    if token_ids:
        low, high = min(token_ids), max(token_ids)
        if low < 0 or high >= 2**31:
            raise ValueError(f"token ids must be in [0, 2**31), got {low}..{high}")
    return token_ids

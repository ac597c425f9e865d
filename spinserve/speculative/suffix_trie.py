"""The suffix trie behind `spinserve.speculative.suffix`: counted paths of bounded depth,
the longest match of a context, and the most frequent continuation with its path
probabilities. Pure data structure and functions; no drafter state.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

ROOT = 0  # the node of the empty path
NO_NODE = -1
_STALE = -2  # a node's best child is unknown since a count went down; found again when asked
_TOKEN_BITS = 32  # an edge's key is parent << 32 | token (token ids are in [0, 2**31))


class SuffixTrie:
    """Counts of every token window of length <= ``depth`` in the sequences inserted.

    ``count(node)``: occurrences of the node's path; ``num_continued(node)``: those followed by
    another token inside the window (the sum of the children's counts). `insert` and `remove`
    are exact inverses, so a sequence's contribution is evicted by removing the same tokens;
    nodes whose count drops to zero are freed and their ids reused.

    Nodes are int ids into parallel arrays and the edges one dict of ints: a trie of a million
    nodes is a handful of objects the garbage collector never walks (with an object per node,
    collection pauses cost several times the inserts themselves).
    """

    def __init__(self, depth: int) -> None:
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        self.depth = depth
        self._edges: dict[int, int] = {}  # parent << _TOKEN_BITS | token -> child
        self._count = array("i", [0])
        self._num_continued = array("i", [0])
        self._token = array("i", [NO_NODE])  # the token on the edge into the node
        self._best = array("i", [NO_NODE])  # most frequent child, NO_NODE or _STALE
        # Children as a doubly linked list (to find the best child again after a removal).
        self._first_child = array("i", [NO_NODE])
        self._next = array("i", [NO_NODE])
        self._prev = array("i", [NO_NODE])
        self._free: list[int] = []

    @property
    def num_nodes(self) -> int:
        """Nodes in use, the root excluded."""
        return len(self._edges)

    @property
    def num_slots(self) -> int:
        """Node ids allocated, the free ones and the root included (the arrays' length)."""
        return len(self._count)

    def count(self, node: int) -> int:
        return self._count[node]

    def num_continued(self, node: int) -> int:
        return self._num_continued[node]

    def token(self, node: int) -> int:
        return self._token[node]

    def child(self, node: int, token: int) -> int:
        return self._edges.get(node << _TOKEN_BITS | token, NO_NODE)

    def children(self, node: int) -> list[int]:
        out, child = [], self._first_child[node]
        while child != NO_NODE:
            out.append(child)
            child = self._next[child]
        return out

    def best_child(self, node: int) -> int:
        """The most frequent child (ties: the smaller token), NO_NODE for a leaf."""
        best = self._best[node]
        if best == _STALE:
            best = NO_NODE
            for child in self.children(node):
                if best == NO_NODE or self._beats(child, best):
                    best = child
            self._best[node] = best
        return best

    def _beats(self, a: int, b: int) -> bool:
        count_a, count_b = self._count[a], self._count[b]
        return count_a > count_b or (count_a == count_b and self._token[a] < self._token[b])

    def step(self, node: int, token: int) -> int:
        """Count one more occurrence of ``node``'s path followed by ``token``; the child."""
        key = node << _TOKEN_BITS | token
        child = self._edges.get(key)
        if child is None:
            child = self._edges[key] = self._new_node(node, token)
        self._num_continued[node] += 1
        self._count[child] += 1
        best = self._best[node]
        # Counts only went up: the best is the old best or this child.
        if best != _STALE and (best == NO_NODE or self._beats(child, best)):
            self._best[node] = child
        return child

    def open_window(self) -> int:
        """Count one more window (it starts at the root, which counts windows); the root, for
        `step` to extend it."""
        self._count[ROOT] += 1
        return ROOT

    def add_window(self, window: Sequence[int]) -> None:
        """Count one occurrence of ``window`` (and of each of its prefixes)."""
        node = self.open_window()
        for token in window[: self.depth]:
            node = self.step(node, token)

    def remove_window(self, window: Sequence[int]) -> None:
        """Undo `add_window` of the same tokens, freeing nodes no occurrence uses any more."""
        node = ROOT
        self._count[ROOT] -= 1
        for token in window[: self.depth]:
            key = node << _TOKEN_BITS | token
            child = self._edges[key]
            self._num_continued[node] -= 1
            self._count[child] -= 1
            if self._best[node] == child:
                self._best[node] = _STALE
            if self._count[child] == 0:  # then so will be the rest of the window's path
                del self._edges[key]
                self._unlink(node, child)
                self._free.append(child)
            node = child

    def insert(self, token_ids: Sequence[int]) -> None:
        for start in range(len(token_ids)):
            self.add_window(token_ids[start : start + self.depth])

    def remove(self, token_ids: Sequence[int]) -> None:
        for start in range(len(token_ids)):
            self.remove_window(token_ids[start : start + self.depth])

    def _new_node(self, parent: int, token: int) -> int:
        """A childless node under ``parent``, first in its list of children."""
        head = self._first_child[parent]
        if self._free:
            node = self._free.pop()
            self._count[node] = 0
            self._num_continued[node] = 0
            self._token[node] = token
            self._best[node] = NO_NODE
            self._first_child[node] = NO_NODE
            self._next[node] = head
            self._prev[node] = NO_NODE
        else:
            node = len(self._count)
            self._count.append(0)
            self._num_continued.append(0)
            self._token.append(token)
            self._best.append(NO_NODE)
            self._first_child.append(NO_NODE)
            self._next.append(head)
            self._prev.append(NO_NODE)
        if head != NO_NODE:
            self._prev[head] = node
        self._first_child[parent] = node
        return node

    def _unlink(self, parent: int, node: int) -> None:
        prev, nxt = self._prev[node], self._next[node]
        if prev == NO_NODE:
            self._first_child[parent] = nxt
        else:
            self._next[prev] = nxt
        if nxt != NO_NODE:
            self._prev[nxt] = prev


def longest_match(trie: SuffixTrie, context: Sequence[int]) -> tuple[int, int]:
    """The longest suffix of ``context`` that occurs in ``trie`` followed by some token: its
    length and its node; (0, NO_NODE) when not even the last token does.

    Any suffix of such a suffix qualifies too, so lengths are tried upward until one fails.
    """
    best = (0, NO_NODE)
    for match_len in range(1, min(len(context), trie.depth - 1) + 1):
        node = ROOT
        for token in context[len(context) - match_len :]:
            node = trie.child(node, token)
            if node == NO_NODE:
                return best
        if trie.num_continued(node) == 0:
            return best
        best = (match_len, node)
    return best


def greedy_continuation(
    trie: SuffixTrie, node: int, max_tokens: int, min_confidence: float
) -> tuple[list[int], list[float]]:
    """Follow the most frequent child (ties: the smaller token id) while the product of the
    empirical probabilities ``count(child) / num_continued(node)`` stays >= ``min_confidence``.

    Returns the tokens and the running products (their sum is the expected number of tokens
    accepted if the target behaved like the counts)."""
    token_ids: list[int] = []
    path_probs: list[float] = []
    prob = 1.0
    while len(token_ids) < max_tokens:
        child = trie.best_child(node)
        if child == NO_NODE:
            break
        prob *= trie.count(child) / trie.num_continued(node)
        if prob < min_confidence:
            break
        token_ids.append(trie.token(child))
        path_probs.append(prob)
        node = child
    return token_ids, path_probs


def propose_from(
    trie: SuffixTrie, context: Sequence[int], max_tokens: int, min_confidence: float
) -> tuple[list[int], list[float]]:
    """`greedy_continuation` after the `longest_match` of ``context``; ([], []) without one."""
    _, node = longest_match(trie, context)
    if node == NO_NODE:
        return [], []
    return greedy_continuation(trie, node, max_tokens, min_confidence)

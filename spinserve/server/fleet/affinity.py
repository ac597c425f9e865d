"""Conversation affinity: which replica served a prompt's beginning before. Pure; no Ray.

A prompt is read as one canonical text (a chat's messages joined with their roles), cut in
chunks of `CHUNK_CHARS`; key i hashes the text up to the end of chunk i. A later turn of a
conversation repeats the earlier turns, so its keys begin with theirs: the replica that
served the longest of them holds the most of its prefix in its KV cache, and its suffix
drafter has seen the conversation. Prompts sharing only a system prompt share its keys.

    >>> a = prefix_keys(Prompt(text="x" * 70))
    >>> b = prefix_keys(Prompt(text="x" * 70 + " and more text"))
    >>> len(a), b[: len(a)] == a
    (2, True)
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from spinserve.server.messages import Prompt

CHUNK_CHARS = 32
MAX_CHUNKS = 64  # a conversation is known by its first 2,048 characters
TABLE_SIZE = 100_000  # keys remembered (least recently routed forgotten first)


def canonical_text(prompt: Prompt) -> str:
    if prompt.messages is not None:
        messages = prompt.messages
        return "".join(f"{m.get('role', '')}\x00{m.get('content', '')}\x01" for m in messages)
    if prompt.token_ids is not None:
        return ",".join(map(str, prompt.token_ids))
    return prompt.text or ""


def prefix_keys(prompt: Prompt) -> tuple[str, ...]:
    """Keys of the prompt's whole chunks (a prompt under `CHUNK_CHARS` has none)."""
    text = canonical_text(prompt)
    keys = []
    digest = hashlib.blake2b(digest_size=8)
    for i in range(min(len(text) // CHUNK_CHARS, MAX_CHUNKS)):
        digest.update(text[i * CHUNK_CHARS : (i + 1) * CHUNK_CHARS].encode())
        keys.append(digest.copy().hexdigest())
    return tuple(keys)


class AffinityTable:
    """Prefix key -> the replica that last served a prompt with that key."""

    def __init__(self, capacity: int = TABLE_SIZE) -> None:
        self._replica_of: OrderedDict[str, str] = OrderedDict()
        self._capacity = capacity

    def lookup(self, keys: Sequence[str], alive: Mapping[str, object]) -> str | None:
        """The replica, among ``alive``, that served the longest of these prefixes."""
        for key in reversed(keys):
            replica = self._replica_of.get(key)
            if replica is not None and replica in alive:
                return replica
        return None

    def record(self, keys: Sequence[str], replica: str) -> None:
        for key in keys:
            self._replica_of[key] = replica
            self._replica_of.move_to_end(key)
        while len(self._replica_of) > self._capacity:
            self._replica_of.popitem(last=False)


def rank_replicas(
    affine: str | None, loads: Mapping[str, int], slack: int, rng: random.Random | None = None
) -> list[list[str]]:
    """Replicas in the order to try: the conversation's own while it has at most ``slack``
    more ongoing requests than the least loaded, then everyone (the router takes the least
    loaded of a rank that is not full). Ties are broken by ``rng`` (none: by name), so new
    conversations spread over idle replicas.

    >>> rank_replicas("a", {"a": 3, "b": 1}, slack=2)
    [['a'], ['b']]
    >>> rank_replicas("a", {"a": 5, "b": 1}, slack=2)
    [['b', 'a']]
    >>> rank_replicas(None, {"a": 0, "b": 1}, slack=2)
    [['a', 'b']]
    """
    order = {r: rng.random() for r in loads} if rng is not None else {r: r for r in loads}
    everyone = sorted(loads, key=lambda r: (loads[r], order[r]))
    if affine is None or affine not in loads or loads[affine] > min(loads.values()) + slack:
        return [everyone]
    return [[affine], [r for r in everyone if r != affine]]

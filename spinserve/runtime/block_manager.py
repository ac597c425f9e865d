"""Hands out KV cache blocks to requests, and keeps full blocks for reuse. No torch.

A request's block table grows as its tokens are computed and shrinks when speculation rolls
back. Allocation prefers the block right after the request's last one, so that a request's
keys usually lie in one contiguous run and attention can read them as a slice, not a gather.

**Prefix caching.** A block is *free* (nobody holds it, nothing in it worth keeping), *held*
(reference count > 0: several requests may hold one block) or *cached*: nobody holds it, but
it keeps the keys and values of a full block whose content hash is known. A full block's hash
chains the hash of the block before it with the block's own tokens (`block_hashes`), so equal
hashes mean an equal whole prefix, not just equal tokens; the chain starts from a salt naming
the model and the cache's dtype. A new request walks its prompt's hashes and takes every
block of its longest cached prefix (`cached_prefix`, `acquire`) instead of computing it.
Cached blocks count as free space: when the pool needs a block and no free one is left, the
least recently released cached block is reclaimed. Only full blocks of tokens that will not
change are registered (`register`), and a request writes only past its cached prefix, so no
request ever writes into a block another request holds. SHA-256, not Python's ``hash``: the
tokens are the user's, and a crafted collision would hand one request another's cache.
"""

from __future__ import annotations

import hashlib
import heapq
from array import array
from collections import OrderedDict
from collections.abc import Sequence


def blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks needed to hold ``num_tokens`` tokens.

    >>> blocks_for(0, 16), blocks_for(1, 16), blocks_for(16, 16), blocks_for(17, 16)
    (0, 1, 1, 2)
    """
    return -(-num_tokens // block_size)


def chain_root(salt: str) -> bytes:
    """The hash a chain of blocks starts from: what the cached content depends on besides
    the tokens (the model, the cache's dtype)."""
    return hashlib.sha256(b"spinserve-kv\0" + salt.encode()).digest()


def block_hashes(
    root: bytes, token_ids: Sequence[int], block_size: int, hashes: list[bytes], num_blocks: int
) -> list[bytes]:
    """Extend ``hashes`` (in place; the hashes of the first blocks of ``token_ids``) to the
    first ``num_blocks`` full blocks, and return it.

    >>> a = block_hashes(chain_root("m"), [1, 2, 3, 4, 5], 2, [], 2)
    >>> b = block_hashes(chain_root("m"), [9, 9, 3, 4], 2, [], 2)
    >>> len(a), a[1] == b[1]  # same second block, different first: different hashes
    (2, False)
    """
    while len(hashes) < num_blocks:
        i = len(hashes)
        block = token_ids[i * block_size : (i + 1) * block_size]
        if len(block) < block_size:
            raise ValueError(f"block {i} of {len(token_ids)} tokens is not full")
        parent = hashes[-1] if hashes else root
        hashes.append(hashlib.sha256(parent + array("q", block).tobytes()).digest())
    return hashes


class BlockManager:
    """A pool of ``num_blocks`` blocks of ``block_size`` token slots; with ``prefix_caching``
    full registered blocks outlive the requests that computed them."""

    def __init__(
        self, num_blocks: int, block_size: int, prefix_caching: bool = False, salt: str = ""
    ) -> None:
        """``salt``: what the pool's content depends on besides the tokens (`chain_root`)."""
        if num_blocks < 1:
            raise ValueError("the block pool needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._free = set(range(num_blocks))
        self._heap = list(range(num_blocks))  # may hold stale ids; `_free` is the truth
        self._refs = [0] * num_blocks
        self._cached: OrderedDict[int, None] = OrderedDict()  # held by nobody; LRU first
        self._hash_of: dict[int, bytes] = {}
        self._block_of: dict[bytes, int] = {}
        self._root = chain_root(salt)

    @property
    def num_free_blocks(self) -> int:
        """Blocks a request can take now: free ones and cached ones nobody holds."""
        return len(self._free) + len(self._cached)

    @property
    def num_cached_blocks(self) -> int:
        """Registered blocks, held or not."""
        return len(self._hash_of)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests, 0..1 (cached blocks nobody holds are free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def num_missing(self, block_ids: list[int], num_tokens: int) -> int:
        return max(0, blocks_for(num_tokens, self.block_size) - len(block_ids))

    def can_hold(self, block_ids: list[int], num_tokens: int) -> bool:
        return self.num_missing(block_ids, num_tokens) <= self.num_free_blocks

    def grow(self, block_ids: list[int], num_tokens: int) -> None:
        """Append blocks to ``block_ids`` (in place) until it holds ``num_tokens`` tokens."""
        missing = self.num_missing(block_ids, num_tokens)
        if missing > self.num_free_blocks:
            raise RuntimeError(f"out of KV blocks: need {missing}, have {self.num_free_blocks}")
        for _ in range(missing):
            block_ids.append(self._take(block_ids[-1] + 1 if block_ids else None))

    def shrink(self, block_ids: list[int], num_tokens: int) -> None:
        """Release the blocks of ``block_ids`` (in place) beyond those ``num_tokens`` need."""
        keep = blocks_for(num_tokens, self.block_size)
        self.release(block_ids[keep:])
        del block_ids[keep:]

    def free(self, block_ids: list[int]) -> None:
        """Release every block of ``block_ids`` and empty it."""
        self.release(block_ids)
        block_ids.clear()

    def release(self, blocks: list[int]) -> None:
        """Drop one reference to each block. The last blocks of a sequence go first, so that
        among the cached ones its tail is reclaimed before its (more shared) head."""
        for block in reversed(blocks):
            if not 0 <= block < self.num_blocks:
                raise RuntimeError(f"block {block} is not in this pool")
            if self._refs[block] <= 0:
                raise RuntimeError(f"block {block} freed twice")
            self._refs[block] -= 1
            if self._refs[block]:
                continue
            if block in self._hash_of:
                self._cached[block] = None
            else:
                self._free.add(block)
                heapq.heappush(self._heap, block)
        if len(self._heap) > 2 * self.num_blocks:  # drop stale ids left by `_take`
            self._heap = sorted(self._free)

    # --- prefix caching ----------------------------------------------------------------------

    def hashes(self, token_ids: Sequence[int], hashes: list[bytes], num_blocks: int) -> list[bytes]:
        """`block_hashes` from this pool's root."""
        return block_hashes(self._root, token_ids, self.block_size, hashes, num_blocks)

    def cached_prefix(self, hashes: Sequence[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of ``hashes`` (not yet taken)."""
        found: list[int] = []
        if self.prefix_caching:
            for h in hashes:
                block = self._block_of.get(h)
                if block is None:
                    break
                found.append(block)
        return found

    def num_unheld(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks`` nobody holds: taking them uses that much free space."""
        return sum(1 for b in blocks if self._refs[b] == 0)

    def acquire(self, block_ids: list[int], blocks: Sequence[int]) -> None:
        """Append cached ``blocks`` to ``block_ids``, holding each once more."""
        for block in blocks:
            if block not in self._hash_of:
                raise RuntimeError(f"block {block} is not cached")
            if self._refs[block] == 0:
                del self._cached[block]
            self._refs[block] += 1
            block_ids.append(block)

    def register(self, block_ids: Sequence[int], hashes: Sequence[bytes], start: int = 0) -> None:
        """Record that block ``block_ids[i]`` holds the full block hashed ``hashes[i]`` (for
        ``i >= start``): from now on its content never changes. A hash already held by another
        block leaves that one registered and this one private."""
        if not self.prefix_caching:
            return
        for i in range(start, len(hashes)):
            block, h = block_ids[i], hashes[i]
            if block not in self._hash_of and h not in self._block_of:
                self._hash_of[block] = h
                self._block_of[h] = block

    def registered_blocks(self) -> dict[int, bytes]:
        """Block -> hash of every registered block, held or not (a copy)."""
        return dict(self._hash_of)

    def clear_cache(self) -> int:
        """Forget every cached block nobody holds; returns how many."""
        dropped = list(self._cached)
        for block in dropped:
            self._forget(block)
            self._free.add(block)
            heapq.heappush(self._heap, block)
        self._cached.clear()
        return len(dropped)

    def _forget(self, block: int) -> None:
        h = self._hash_of.pop(block)
        del self._block_of[h]

    def _take(self, preferred: int | None) -> int:
        """A block for a writer: a free one (``preferred`` if it is), else the least recently
        released cached one, whose content is forgotten."""
        if preferred is not None and preferred in self._free:
            block = preferred
            self._free.remove(block)
        elif self._free:
            while (block := heapq.heappop(self._heap)) not in self._free:
                pass
            self._free.remove(block)
        else:
            block, _ = self._cached.popitem(last=False)
            self._forget(block)
        self._refs[block] = 1
        return block

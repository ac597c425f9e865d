"""Hands out KV cache blocks to requests. No torch.

A request's block table grows as its tokens are computed and shrinks when speculation rolls
back. Allocation prefers the block right after the request's last one, so that a request's
keys usually lie in one contiguous run and attention can read them as a slice, not a gather.
"""

from __future__ import annotations

import heapq


def blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks needed to hold ``num_tokens`` tokens.

    >>> blocks_for(0, 16), blocks_for(1, 16), blocks_for(16, 16), blocks_for(17, 16)
    (0, 1, 1, 2)
    """
    return -(-num_tokens // block_size)


class BlockManager:
    """A pool of ``num_blocks`` blocks of ``block_size`` token slots."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1:
            raise ValueError("the block pool needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free = set(range(num_blocks))
        self._heap = list(range(num_blocks))  # may hold stale ids; `_free` is the truth

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use, 0..1."""
        return 1.0 - len(self._free) / self.num_blocks

    def num_missing(self, block_ids: list[int], num_tokens: int) -> int:
        return max(0, blocks_for(num_tokens, self.block_size) - len(block_ids))

    def can_hold(self, block_ids: list[int], num_tokens: int) -> bool:
        return self.num_missing(block_ids, num_tokens) <= len(self._free)

    def grow(self, block_ids: list[int], num_tokens: int) -> None:
        """Append blocks to ``block_ids`` (in place) until it holds ``num_tokens`` tokens."""
        missing = self.num_missing(block_ids, num_tokens)
        if missing > len(self._free):
            raise RuntimeError(f"out of KV blocks: need {missing}, have {len(self._free)}")
        for _ in range(missing):
            block_ids.append(self._take(block_ids[-1] + 1 if block_ids else None))

    def shrink(self, block_ids: list[int], num_tokens: int) -> None:
        """Free the blocks of ``block_ids`` (in place) beyond those ``num_tokens`` need."""
        keep = blocks_for(num_tokens, self.block_size)
        self.release(block_ids[keep:])
        del block_ids[keep:]

    def free(self, block_ids: list[int]) -> None:
        """Free every block of ``block_ids`` and empty it."""
        self.release(block_ids)
        block_ids.clear()

    def release(self, blocks: list[int]) -> None:
        for block in blocks:
            if not 0 <= block < self.num_blocks:
                raise RuntimeError(f"block {block} is not in this pool")
            if block in self._free:
                raise RuntimeError(f"block {block} freed twice")
            self._free.add(block)
            heapq.heappush(self._heap, block)
        if len(self._heap) > 2 * self.num_blocks:  # drop stale ids left by `_take`
            self._heap = sorted(self._free)

    def _take(self, preferred: int | None) -> int:
        if preferred is not None and preferred in self._free:
            self._free.remove(preferred)
            return preferred
        while True:
            block = heapq.heappop(self._heap)
            if block in self._free:
                self._free.remove(block)
                return block

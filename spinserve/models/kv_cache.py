"""The KV cache pool: one key and one value tensor per layer, indexed by slot.

A slot holds one token's keys/values; slots are grouped into fixed-size blocks that the
engine's block manager hands out. This class only owns memory; who owns which block is
bookkeeping that lives in the engine.
"""

from __future__ import annotations

import torch

from spinserve.config.model import ModelConfig


class KVCache:
    """Per layer ``k[layer]``, ``v[layer]``: [num_blocks * block_size, num_kv_heads, head_dim].

    ``torch.empty`` reserves address space without touching it, so memory is committed as
    blocks are first written, not at start-up.
    """

    def __init__(
        self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype
    ) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        num_slots = num_blocks * block_size
        shape = (num_slots, config.num_kv_heads, config.head_dim)
        self.k = [torch.empty(shape, dtype=dtype) for _ in range(config.num_layers)]
        self.v = [torch.empty(shape, dtype=dtype) for _ in range(config.num_layers)]

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

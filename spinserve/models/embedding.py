"""Token embeddings looked up in a table kept in its GGUF blocks.

Dequantized to fp32, a quantized GGUF's token embedding is the largest tensor a small model
holds: Qwen2.5-Coder-1.5B's 151,936 x 1,536 table is 0.93 GB in fp32 and 131 MB in its Q4_K
blocks. A step reads only the rows of its tokens, so the table stays in blocks and a lookup
dequantizes those rows with gguf's reference dequantizer, the one that made the fp32 table: a
row of a quantized matrix is a run of whole blocks, each dequantized on its own, so the rows
are bit for bit those of the table dequantized in full.

Where a tied lm_head is multiplied as blocks, the head and the lookups share one `BlockWeight`
in the interleaved layout (`spinserve.ops.interleave`, 8 rows per chunk). A row is then read
from its group: through a byte map where the layout only moves bytes (Q8_0), else by
deinterleaving the group.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType, quants
from torch import nn

from spinserve.ops import interleave
from spinserve.ops.blocks import BLOCK_TYPES, BlockWeight

EMBEDDING = "model.embed_tokens.weight"


class QuantizedEmbedding(nn.Module):
    """``forward(input_ids) -> [*input_ids.shape, hidden]`` in ``dtype``, dequantized from
    the blocks of ``weight`` ([vocab, hidden]) row by row: the values of `nn.Embedding` over
    ``weight.dequantize()``."""

    def __init__(self, weight: BlockWeight, dtype: torch.dtype) -> None:
        super().__init__()
        self.table = weight
        self.dtype = dtype
        self._byte_map = byte_map(weight.qtype, weight.shape[1])
        # gguf's dequantizer of the rows' type; its rows entry point skips the grouping of
        # rows `gguf.quants.dequantize` does, which costs more than a step's few rows
        gguf_type = GGMLQuantizationType(gguf_type_of(weight.qtype))
        self._dequantize_rows = getattr(quants, gguf_type.name).dequantize_rows

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [num_tokens] int64
        vocab, hidden = self.table.shape
        shape = (*input_ids.shape, hidden)
        ids = input_ids.reshape(-1).numpy()
        if ids.size == 0:
            return torch.empty(shape, dtype=self.dtype)
        if ids.min() < 0 or ids.max() >= vocab:
            raise IndexError(f"token id out of range [0, {vocab}) in the embedding lookup")
        raw = gguf_rows(self.table, ids, self._byte_map)
        values = torch.from_numpy(self._dequantize_rows(raw).reshape(shape))
        return values if self.dtype == torch.float32 else values.to(self.dtype)

    def dequantize(self) -> torch.Tensor:
        """[vocab, hidden] fp32: the whole table (for a tied lm_head kept dense)."""
        return self.table.dequantize()


def gguf_type_of(qtype: int) -> int:
    """The ggml type of the GGUF blocks a `BlockWeight` of ``qtype`` holds, interleaved or not."""
    return interleave.BASE.get(qtype, qtype)


def gguf_rows(
    weight: BlockWeight, ids: np.ndarray, byte_map: np.ndarray | None = None
) -> np.ndarray:
    """The GGUF blocks of rows ``ids`` of ``weight`` ([len(ids), row bytes] uint8, of
    `gguf_type_of` its type). ``byte_map``: `byte_map` of an interleaved weight, to read rows
    straight from their chunks."""
    blocks = weight.blocks.numpy()
    rows = BLOCK_TYPES[weight.qtype].rows
    if rows == 1:
        return blocks[ids]
    groups, within = np.divmod(ids, rows)
    if byte_map is not None:
        return blocks[groups[:, None], byte_map[within]]
    needed, which = np.unique(groups, return_inverse=True)
    gguf = interleave.deinterleave(blocks[needed], weight.qtype)  # [8 * len(needed), row bytes]
    return gguf[which.reshape(-1) * rows + within]


def byte_map(qtype: int, in_features: int) -> np.ndarray | None:
    """For an interleaved type whose layout only moves bytes: [8, row bytes] int64, the byte
    of a group's chunks that holds each byte of each of its rows' GGUF blocks; else None.

    Found by deinterleaving one chunk whose bytes number their own positions (the low and the
    high byte of each position apart), and kept only if it deinterleaves random bytes as
    `interleave.deinterleave` does, so no layout is described twice.
    """
    if qtype not in interleave.BASE:
        return None
    chunk = interleave.CHUNK_BYTES[qtype]
    position = np.arange(chunk, dtype=np.int64).reshape(1, chunk)
    try:
        low = interleave.deinterleave((position & 0xFF).astype(np.uint8), qtype)
        high = interleave.deinterleave((position >> 8).astype(np.uint8), qtype)
        one = low.astype(np.int64) | (high.astype(np.int64) << 8)  # [8, block bytes]
        sample = np.random.default_rng(0).integers(0, 256, (1, chunk), dtype=np.uint8)
        if not np.array_equal(interleave.deinterleave(sample, qtype), sample[0][one]):
            return None
    except (ValueError, IndexError):
        return None
    num_blocks = in_features // BLOCK_TYPES[qtype].weights
    # block j of a row lies in chunk j of its group, at the same place as block 0 in chunk 0
    offsets = np.arange(num_blocks, dtype=np.int64)[:, None] * chunk
    return (offsets[None] + one[:, None, :]).reshape(interleave.ROWS, -1)

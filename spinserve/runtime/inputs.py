"""Build the tensors of one forward from a `StepBatch`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spinserve.ops.attention import (
    AttentionMetadata,
    RowKeys,
    SeqSpan,
    as_index,
    causal_mask,
    row_keys,
)
from spinserve.types.batch import SeqChunk, StepBatch


@dataclass(frozen=True)
class StepInputs:
    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    attn: AttentionMetadata
    logits_indices: torch.Tensor  # [num_logits]


def slots_for(block_ids: list[int], block_size: int, lo: int, hi: int) -> slice | torch.Tensor:
    """Cache slots of positions ``lo..hi-1``: a slice when their blocks are consecutive.

    >>> slots_for([4, 5], 2, 1, 4)
    slice(9, 12, None)
    >>> slots_for([4, 1], 2, 1, 4).tolist()
    [9, 2, 3]
    """
    first, last = lo // block_size, (hi - 1) // block_size
    used = block_ids[first : last + 1]
    if len(used) < last - first + 1:
        raise ValueError(f"block table of {len(block_ids)} blocks too short for position {hi - 1}")
    if all(b == used[0] + i for i, b in enumerate(used)):
        base = used[0] * block_size - first * block_size
        return slice(base + lo, base + hi)
    table = torch.tensor(used, dtype=torch.int64)
    slots = (table[:, None] * block_size + torch.arange(block_size)[None, :]).reshape(-1)
    offset = first * block_size
    return slots[lo - offset : hi - offset]


def _span(
    chunk: SeqChunk, q_start: int, block_size: int, window: int | None, per_row: bool
) -> SeqSpan:
    lo = 0 if window is None else max(0, chunk.start_pos - window + 1)
    per_row = per_row and chunk.num_tokens > 1  # a single query is computed on its own anyway
    return SeqSpan(
        q_start=q_start,
        q_end=q_start + chunk.num_tokens,
        kv_slots=slots_for(chunk.block_ids, block_size, lo, chunk.end_pos),
        mask=None if per_row else causal_mask(chunk.start_pos, chunk.num_tokens, lo, window),
        row_keys=row_keys(chunk.start_pos, chunk.num_tokens, lo, window) if per_row else None,
    )


def build_step_inputs(
    batch: StepBatch,
    block_size: int,
    sliding_window: int | None,
    per_row: bool = True,
    row_kernel: bool = False,
) -> StepInputs:
    """Flatten the batch; one span per request for full layers and, if any, sliding layers.

    ``per_row``: attention computes each query on its own (batch-invariant, see
    `spinserve.ops.attention.ragged_attention`); off, a chunk's queries go in one call.
    ``row_kernel``: also list every row's keys (`RowKeys`) for `row_attention`."""
    ids: list[int] = []
    positions: list[int] = []
    slot_parts: list[torch.Tensor] = []
    full: list[SeqSpan] = []
    sliding: list[SeqSpan] = []
    logits_rows: list[int] = []
    for chunk in batch.chunks:
        q_start = len(ids)
        ids.extend(chunk.input_ids)
        positions.extend(range(chunk.start_pos, chunk.end_pos))
        new_slots = slots_for(chunk.block_ids, block_size, chunk.start_pos, chunk.end_pos)
        slot_parts.append(as_index(new_slots))
        full.append(_span(chunk, q_start, block_size, None, per_row))
        if sliding_window is not None:
            sliding.append(_span(chunk, q_start, block_size, sliding_window, per_row))
        end = q_start + chunk.num_tokens
        logits_rows.extend(range(end - chunk.num_logits, end))
    by_row = per_row and row_kernel
    return StepInputs(
        input_ids=torch.tensor(ids, dtype=torch.int64),
        positions=torch.tensor(positions, dtype=torch.int64),
        attn=AttentionMetadata(
            slot_mapping=torch.cat(slot_parts),
            full=full,
            sliding=sliding if sliding_window is not None else None,
            full_rows=RowKeys.of(full) if by_row else None,
            sliding_rows=RowKeys.of(sliding) if by_row and sliding_window is not None else None,
        ),
        logits_indices=torch.tensor(logits_rows, dtype=torch.int64),
    )

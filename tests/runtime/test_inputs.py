"""From a `StepBatch` to flat tensors: cache slots, positions, logits rows and attention spans."""

from __future__ import annotations

import pytest
import torch

from spinserve.runtime.inputs import build_step_inputs, slots_for
from spinserve.types.batch import SeqChunk, StepBatch


def as_list(slots: slice | torch.Tensor) -> list[int]:
    if isinstance(slots, slice):
        return list(range(slots.start, slots.stop))
    return slots.tolist()


def expected_slots(block_ids: list[int], block_size: int, lo: int, hi: int) -> list[int]:
    return [block_ids[p // block_size] * block_size + p % block_size for p in range(lo, hi)]


def expected_mask(start: int, num_queries: int, lo: int, window: int | None) -> list | None:
    """Query ``start + i`` sees key ``lo + j`` when not in its future and inside the window."""
    rows = [
        [
            lo + j <= start + i and (window is None or start + i - (lo + j) < window)
            for j in range(start + num_queries - lo)
        ]
        for i in range(num_queries)
    ]
    return None if all(all(r) for r in rows) else rows


@pytest.mark.parametrize(
    ("block_ids", "block_size", "lo", "hi", "is_slice", "expected"),
    [
        ([4, 5], 2, 1, 4, True, [9, 10, 11]),
        ([4, 1], 2, 1, 4, False, [9, 2, 3]),
        ([7], 4, 0, 4, True, [28, 29, 30, 31]),
        ([3], 4, 2, 3, True, [14]),
        ([7, 2, 3], 4, 5, 12, True, [9, 10, 11, 12, 13, 14, 15]),  # run starts at block 1
        ([1, 2, 3, 9], 2, 0, 3, True, [2, 3, 4]),  # blocks beyond hi are ignored
        ([0, 2], 4, 0, 8, False, [0, 1, 2, 3, 8, 9, 10, 11]),
        ([9, 8], 2, 0, 4, False, [18, 19, 16, 17]),  # descending is not consecutive
        ([5, 6, 1], 2, 2, 6, False, [12, 13, 2, 3]),
        ([5, 6, 1], 2, 5, 6, True, [3]),  # one block is always a run
        ([0], 1, 0, 1, True, [0]),
        ([3, 4, 5, 6], 1, 1, 4, True, [4, 5, 6]),
    ],
)
def test_slots_for(block_ids, block_size, lo, hi, is_slice, expected):
    slots = slots_for(block_ids, block_size, lo, hi)
    assert isinstance(slots, slice) is is_slice
    assert as_list(slots) == expected == expected_slots(block_ids, block_size, lo, hi)
    if not is_slice:
        assert slots.dtype == torch.int64


@pytest.mark.parametrize(
    ("block_ids", "block_size", "lo", "hi"),
    [
        ([], 4, 0, 1),
        ([1], 4, 0, 5),
        ([1, 2], 4, 4, 9),
        ([1, 2], 1, 0, 3),
    ],
)
def test_slots_for_short_block_table_raises(block_ids, block_size, lo, hi):
    with pytest.raises(ValueError, match="too short"):
        slots_for(block_ids, block_size, lo, hi)


def test_build_rejects_a_chunk_beyond_its_blocks():
    batch = StepBatch([SeqChunk("a", [1, 2], start_pos=3, block_ids=[0], num_logits=1)])
    with pytest.raises(ValueError, match="too short"):
        build_step_inputs(batch, block_size=4, sliding_window=None)


# Four chunks, block_size 4: a prefill, a decode, a mid-prompt chunk over two scattered
# blocks, and a 3-token verification chunk.
MULTI = StepBatch(
    [
        SeqChunk("a", [11, 12, 13], start_pos=0, block_ids=[2], num_logits=1),
        SeqChunk("b", [21], start_pos=5, block_ids=[0, 1], num_logits=1),
        SeqChunk("c", [31, 32, 33, 34, 35, 36], start_pos=2, block_ids=[7, 3], num_logits=0),
        SeqChunk("d", [41, 42, 43], start_pos=4, block_ids=[5, 6], num_logits=3),
    ]
)


def test_multi_chunk_flat_tensors():
    inputs = build_step_inputs(MULTI, block_size=4, sliding_window=None)
    assert inputs.input_ids.tolist() == [11, 12, 13, 21, 31, 32, 33, 34, 35, 36, 41, 42, 43]
    assert inputs.positions.tolist() == [0, 1, 2, 5, 2, 3, 4, 5, 6, 7, 4, 5, 6]
    assert inputs.attn.slot_mapping.tolist() == [8, 9, 10, 5, 30, 31, 12, 13, 14, 15, 24, 25, 26]
    assert inputs.logits_indices.tolist() == [2, 3, 10, 11, 12]
    for t in (inputs.input_ids, inputs.positions, inputs.attn.slot_mapping, inputs.logits_indices):
        assert t.dtype == torch.int64
    assert inputs.attn.sliding is None


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("window", [None, 1, 3, 100])
def test_multi_chunk_spans(window, per_row):
    """Batched spans carry the causal (and window) mask; per-row spans carry, for each query,
    the range of keys that mask lets it see."""
    inputs = build_step_inputs(MULTI, block_size=4, sliding_window=window, per_row=per_row)
    kinds = [(inputs.attn.full, None)]
    if window is not None:
        kinds.append((inputs.attn.sliding, window))
    for spans, w in kinds:
        assert len(spans) == len(MULTI.chunks)
        q_start = 0
        for span, chunk in zip(spans, MULTI.chunks, strict=True):
            lo = 0 if w is None else max(0, chunk.start_pos - w + 1)
            assert (span.q_start, span.q_end) == (q_start, q_start + chunk.num_tokens)
            assert as_list(span.kv_slots) == expected_slots(chunk.block_ids, 4, lo, chunk.end_pos)
            expected = expected_mask(chunk.start_pos, chunk.num_tokens, lo, w)
            if span.row_keys is None:
                assert (None if span.mask is None else span.mask.tolist()) == expected
            else:
                assert per_row and span.mask is None and chunk.num_tokens > 1
                num_keys = chunk.end_pos - lo
                seen = [[a <= j < b for j in range(num_keys)] for a, b in span.row_keys]
                assert seen == (expected or [[True] * num_keys] * chunk.num_tokens)
            q_start += chunk.num_tokens


def test_full_spans_use_slices_when_blocks_are_consecutive():
    inputs = build_step_inputs(MULTI, block_size=4, sliding_window=None)
    assert [isinstance(s.kv_slots, slice) for s in inputs.attn.full] == [True, True, False, True]
    assert inputs.attn.full[1].mask is None  # a decode sees everything


@pytest.mark.parametrize(
    ("num_tokens", "num_logits", "expected"),
    [
        ([3], [1], [2]),
        ([3], [0], []),
        ([3], [3], [0, 1, 2]),
        ([2, 1, 4], [0, 1, 2], [2, 5, 6]),
        ([1, 1, 1], [1, 1, 1], [0, 1, 2]),
        ([5, 3], [1, 0], [4]),
        ([4, 4], [0, 0], []),
    ],
)
def test_logits_indices(num_tokens, num_logits, expected):
    chunks = [
        SeqChunk(f"r{i}", list(range(n)), start_pos=0, block_ids=[i], num_logits=k)
        for i, (n, k) in enumerate(zip(num_tokens, num_logits, strict=True))
    ]
    inputs = build_step_inputs(StepBatch(chunks), block_size=8, sliding_window=None)
    assert inputs.logits_indices.tolist() == expected


@pytest.mark.parametrize(
    ("start_pos", "num_tokens", "window", "first_key"),
    [
        (0, 1, 4, 0),
        (2, 2, 4, 0),
        (3, 1, 4, 0),
        (4, 1, 4, 1),
        (10, 1, 4, 7),
        (10, 3, 4, 7),
        (6, 5, 2, 5),
        (7, 2, 1, 7),
    ],
)
def test_sliding_span_starts_a_window_before_the_first_query(
    start_pos, num_tokens, window, first_key
):
    block_ids = [3, 9, 4, 1]  # 16 slots of block_size 4, scattered
    chunk = SeqChunk("a", list(range(num_tokens)), start_pos, block_ids, num_logits=1)
    inputs = build_step_inputs(
        StepBatch([chunk]), block_size=4, sliding_window=window, per_row=False
    )
    (span,) = inputs.attn.sliding
    end = start_pos + num_tokens
    assert as_list(span.kv_slots) == expected_slots(block_ids, 4, first_key, end)
    mask = None if span.mask is None else span.mask.tolist()
    assert mask == expected_mask(start_pos, num_tokens, first_key, window)
    (full,) = inputs.attn.full
    assert as_list(full.kv_slots) == expected_slots(block_ids, 4, 0, end)

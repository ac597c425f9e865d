"""Ragged causal attention over a paged KV cache: many requests, one flat token batch.

Every request appends its own number of tokens at its own position and attends only to its
own keys. There is no padding: the queries of all requests lie end to end in one
``[num_tokens, num_heads, head_dim]`` tensor and each request names its rows and its cache slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spinserve.ops import native


@dataclass(frozen=True)
class SeqSpan:
    """One request's view for one kind of layer (full or sliding window).

    ``q_start:q_end`` are its rows in the flat batch. ``kv_slots`` selects the cache slots of the
    keys it may see (a slice when they are contiguous, else an index tensor ``[num_keys]``).
    ``mask`` ``[num_queries, num_keys]`` (True = attend) is None when every query may see every
    key, as in a single-token decode. ``row_keys``, when given, holds for each query the range
    ``(lo, hi)`` of keys it sees, and each query is then computed on its own (`ragged_attention`).
    """

    q_start: int
    q_end: int
    kv_slots: slice | torch.Tensor
    mask: torch.Tensor | None
    row_keys: list[tuple[int, int]] | None = None


@dataclass(frozen=True)
class RowKeys:
    """Every query row's keys, flat: row r sees cache slots ``slots[offsets[r]:offsets[r+1]]``
    (in position order). What `row_attention` takes."""

    slots: torch.Tensor  # [total keys] int64
    offsets: torch.Tensor  # [num_tokens + 1] int64

    @staticmethod
    def of(spans: list[SeqSpan]) -> RowKeys:
        parts: list[torch.Tensor] = []
        counts: list[int] = []
        for span in spans:
            keys = as_index(span.kv_slots)
            for lo, hi in span.row_keys or [(0, keys.numel())]:
                parts.append(keys[lo:hi])
                counts.append(hi - lo)
        offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)
        offsets[1:] = torch.tensor(counts, dtype=torch.int64).cumsum(0)
        return RowKeys(torch.cat(parts), offsets)


def as_index(slots: slice | torch.Tensor) -> torch.Tensor:
    if isinstance(slots, slice):
        return torch.arange(slots.start, slots.stop, dtype=torch.int64)
    return slots


@dataclass(frozen=True)
class AttentionMetadata:
    """Per-step attention inputs, built once and shared by all layers.

    ``slot_mapping`` [num_tokens]: the cache slot each new token's key and value go to.
    ``sliding`` is None when the model has no sliding-window layers. ``full_rows`` /
    ``sliding_rows``: the same spans as `RowKeys`, when every query is computed on its own
    (for `row_attention`; None otherwise).
    """

    slot_mapping: torch.Tensor
    full: list[SeqSpan]
    sliding: list[SeqSpan] | None = None
    full_rows: RowKeys | None = None
    sliding_rows: RowKeys | None = None


def causal_mask(
    start_pos: int, num_queries: int, first_key_pos: int, window: int | None
) -> torch.Tensor | None:
    """[num_queries, num_keys] bool mask, or None when nothing is masked.

    Query i sits at ``start_pos + i``; keys run from ``first_key_pos`` to the last query. A key
    is visible when it is not in the future and, with a window, less than ``window`` behind.

    >>> causal_mask(start_pos=2, num_queries=2, first_key_pos=0, window=None).int().tolist()
    [[1, 1, 1, 0], [1, 1, 1, 1]]
    """
    if num_queries == 1 and (window is None or start_pos - first_key_pos < window):
        return None  # one query sees every key (a decode: ~10 us of torch calls saved)
    end = start_pos + num_queries
    q_pos = torch.arange(start_pos, end)[:, None]
    k_pos = torch.arange(first_key_pos, end)[None, :]
    mask = k_pos <= q_pos
    if window is not None:
        mask &= q_pos - k_pos < window
    return None if bool(mask.all()) else mask


def write_kv(
    k_cache: torch.Tensor,  # [num_slots, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_slots, num_kv_heads, head_dim]
    k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens]
) -> None:
    k_cache.index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def row_keys(
    start_pos: int, num_queries: int, first_key_pos: int, window: int | None
) -> list[tuple[int, int]]:
    """For each query, the range of keys (indices from ``first_key_pos``) it sees.

    >>> row_keys(start_pos=2, num_queries=2, first_key_pos=0, window=None)
    [(0, 3), (0, 4)]
    >>> row_keys(start_pos=5, num_queries=2, first_key_pos=3, window=3)
    [(0, 3), (1, 4)]
    """
    ranges = []
    for pos in range(start_pos, start_pos + num_queries):
        lo = first_key_pos if window is None else max(first_key_pos, pos - window + 1)
        ranges.append((lo - first_key_pos, pos + 1 - first_key_pos))
    return ranges


def row_attention(
    q: torch.Tensor,  # [num_tokens, num_heads, head_dim] fp32
    k_cache: torch.Tensor,  # [num_slots, num_kv_heads, head_dim] fp32 or fp16
    v_cache: torch.Tensor,
    rows: RowKeys,
    scale: float,
) -> torch.Tensor:
    """[num_tokens, num_heads, head_dim]: every query row against exactly its keys, in one
    call of our kernel (``csrc/row_attention.cpp``): the same bits for a row whatever rows
    share the step, like `ragged_attention` with ``row_keys``, without a Python loop per row."""
    ops = getattr(torch.ops, native.load())
    return ops.row_attention(q, k_cache, v_cache, rows.slots, rows.offsets, scale)


def ragged_attention(
    q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_slots, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_slots, num_kv_heads, head_dim]
    spans: list[SeqSpan],
    scale: float,
) -> torch.Tensor:
    """[num_tokens, num_heads, head_dim]: each span's queries against its own keys.

    A span with ``row_keys`` is computed one query at a time, each against exactly the keys
    it sees, so a query's result does not depend on how many others share its step: the same
    position gives the same bits in a decode, a verification of drafts, or a prefill chunk.
    (torch's attention kernels pick their blocking by query count, which changes rounding; a
    model with bf16 activations turns such last-bit changes into changed tokens.)
    """
    out = torch.empty_like(q)
    gqa = q.shape[1] != k_cache.shape[1]
    for span in spans:
        if span.row_keys is not None:
            _attend_rows(q, k_cache, v_cache, span, scale, gqa, out)
            continue
        qs = q[span.q_start : span.q_end].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        ks = k_cache[span.kv_slots].to(q.dtype).transpose(0, 1).unsqueeze(0)  # [1, KVH, ctx, D]
        vs = v_cache[span.kv_slots].to(q.dtype).transpose(0, 1).unsqueeze(0)
        o = F.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=span.mask, scale=scale, enable_gqa=gqa
        )
        out[span.q_start : span.q_end] = o.squeeze(0).transpose(0, 1)
    return out


def _attend_rows(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    span: SeqSpan,
    scale: float,
    gqa: bool,
    out: torch.Tensor,
) -> None:
    slots = span.kv_slots
    for row, (lo, hi) in zip(range(span.q_start, span.q_end), span.row_keys, strict=True):
        if isinstance(slots, slice):
            keys = slice(slots.start + lo, slots.start + hi)
        else:
            keys = slots[lo:hi]
        ks = k_cache[keys].to(q.dtype).transpose(0, 1).unsqueeze(0)  # [1, KVH, n_keys, D]
        vs = v_cache[keys].to(q.dtype).transpose(0, 1).unsqueeze(0)
        qs = q[row : row + 1].transpose(0, 1).unsqueeze(0)  # [1, H, 1, D]
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=scale, enable_gqa=gqa)
        out[row] = o[0, :, 0]

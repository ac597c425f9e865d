"""Ragged causal attention over a paged KV cache: many requests, one flat token batch.

Every request appends its own number of tokens at its own position and attends only to its
own keys. There is no padding: the queries of all requests lie end to end in one
``[num_tokens, num_heads, head_dim]`` tensor and each request names its rows and its cache slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SeqSpan:
    """One request's view for one kind of layer (full or sliding window).

    ``q_start:q_end`` are its rows in the flat batch. ``kv_slots`` selects the cache slots of the
    keys it may see (a slice when they are contiguous, else an index tensor ``[num_keys]``).
    ``mask`` ``[num_queries, num_keys]`` (True = attend) is None when every query may see every
    key, as in a single-token decode.
    """

    q_start: int
    q_end: int
    kv_slots: slice | torch.Tensor
    mask: torch.Tensor | None


@dataclass(frozen=True)
class AttentionMetadata:
    """Per-step attention inputs, built once and shared by all layers.

    ``slot_mapping`` [num_tokens]: the cache slot each new token's key and value go to.
    ``sliding`` is None when the model has no sliding-window layers.
    """

    slot_mapping: torch.Tensor
    full: list[SeqSpan]
    sliding: list[SeqSpan] | None = None


def causal_mask(
    start_pos: int, num_queries: int, first_key_pos: int, window: int | None
) -> torch.Tensor | None:
    """[num_queries, num_keys] bool mask, or None when nothing is masked.

    Query i sits at ``start_pos + i``; keys run from ``first_key_pos`` to the last query. A key
    is visible when it is not in the future and, with a window, less than ``window`` behind.

    >>> causal_mask(start_pos=2, num_queries=2, first_key_pos=0, window=None).int().tolist()
    [[1, 1, 1, 0], [1, 1, 1, 1]]
    """
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
    k_cache.index_copy_(0, slot_mapping, k)
    v_cache.index_copy_(0, slot_mapping, v)


def ragged_attention(
    q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_slots, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_slots, num_kv_heads, head_dim]
    spans: list[SeqSpan],
    scale: float,
) -> torch.Tensor:
    """[num_tokens, num_heads, head_dim]: each span's queries against its own keys."""
    out = torch.empty_like(q)
    gqa = q.shape[1] != k_cache.shape[1]
    for span in spans:
        qs = q[span.q_start : span.q_end].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        ks = k_cache[span.kv_slots].transpose(0, 1).unsqueeze(0)  # [1, KVH, ctx, D]
        vs = v_cache[span.kv_slots].transpose(0, 1).unsqueeze(0)
        o = F.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=span.mask, scale=scale, enable_gqa=gqa
        )
        out[span.q_start : span.q_end] = o.squeeze(0).transpose(0, 1)
    return out

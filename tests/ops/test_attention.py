"""Ragged paged attention against an explicit softmax(QK^T * scale + mask) V per sequence."""

from __future__ import annotations

import pytest
import torch

from spinserve.ops import native
from spinserve.ops.attention import (
    RowKeys,
    SeqSpan,
    causal_mask,
    ragged_attention,
    row_attention,
    row_keys,
    write_kv,
)


@pytest.mark.parametrize(
    ("start_pos", "num_queries", "first_key_pos", "window", "expected"),
    [
        pytest.param(0, 1, 0, None, None, id="first-token"),
        pytest.param(9, 1, 0, None, None, id="decode"),
        pytest.param(0, 3, 0, None, [[1, 0, 0], [1, 1, 0], [1, 1, 1]], id="prefill-lower-triangle"),
        pytest.param(2, 2, 0, None, [[1, 1, 1, 0], [1, 1, 1, 1]], id="chunk-after-cache"),
        pytest.param(0, 3, 0, 10, [[1, 0, 0], [1, 1, 0], [1, 1, 1]], id="window-wider-than-ctx"),
        pytest.param(0, 2, 0, 1, [[1, 0], [0, 1]], id="window-1-sees-itself"),
        pytest.param(5, 1, 0, 3, [[0, 0, 0, 1, 1, 1]], id="decode-window-from-0"),
        pytest.param(5, 1, 3, 3, None, id="decode-window-trimmed-keys"),
        pytest.param(
            4,
            3,
            2,
            3,
            [[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1]],
            id="chunk-window-band",
        ),
        pytest.param(3, 2, 3, None, [[1, 0], [1, 1]], id="keys-from-later-start"),
    ],
)
def test_causal_mask(start_pos, num_queries, first_key_pos, window, expected):
    mask = causal_mask(start_pos, num_queries, first_key_pos, window)
    if expected is None:
        assert mask is None
    else:
        assert mask.dtype == torch.bool
        assert mask.int().tolist() == expected


def reference_attention(
    q: torch.Tensor,  # [num_queries, num_heads, head_dim]
    keys: torch.Tensor,  # [num_keys, num_kv_heads, head_dim], positions 0..num_keys-1
    values: torch.Tensor,  # [num_keys, num_kv_heads, head_dim]
    start_pos: int,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    """[num_queries, num_heads, head_dim], one sequence, written out by hand."""
    group = q.shape[1] // keys.shape[1]
    keys = keys.repeat_interleave(group, dim=1)  # [num_keys, num_heads, head_dim]
    values = values.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, keys) * scale
    q_pos = torch.arange(start_pos, start_pos + q.shape[0])[:, None]
    k_pos = torch.arange(keys.shape[0])[None, :]
    visible = k_pos <= q_pos
    if window is not None:
        visible &= q_pos - k_pos < window
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), values)


def build_case(
    seqs: list[tuple[int, int]],  # (start_pos, num_queries) per sequence
    layout: str,  # "slice": each sequence in one run of slots; "index": scattered slots
    window: int | None,
    num_heads: int,
    num_kv_heads: int,
    per_row: bool = False,
    seed: int = 0,
    head_dim: int = 8,
):
    """Random q and caches, the spans `ragged_attention` takes, and the reference output."""
    gen = torch.Generator().manual_seed(seed)
    num_tokens = sum(n for _, n in seqs)
    num_slots = 4 * sum(s + n for s, n in seqs) + 8
    q = torch.randn(num_tokens, num_heads, head_dim, generator=gen)
    k_cache = torch.randn(num_slots, num_kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_slots, num_kv_heads, head_dim, generator=gen)
    scale = head_dim**-0.5
    perm = torch.randperm(num_slots, generator=gen)
    spans, expected = [], []
    q_start, next_slot = 0, 0
    for start_pos, n in seqs:
        end = start_pos + n
        if layout == "slice":
            slots = torch.arange(next_slot + 3, next_slot + 3 + end)  # [end]
            next_slot += end + 5
        else:
            slots, perm = perm[:end], perm[end:]
        lo = 0 if window is None else max(0, start_pos - window + 1)
        kv_slots = slice(int(slots[lo]), int(slots[-1]) + 1) if layout == "slice" else slots[lo:]
        if per_row:
            spans.append(
                SeqSpan(q_start, q_start + n, kv_slots, None, row_keys(start_pos, n, lo, window))
            )
        else:
            spans.append(
                SeqSpan(q_start, q_start + n, kv_slots, causal_mask(start_pos, n, lo, window))
            )
        q_rows = q[q_start : q_start + n]
        expected.append(
            reference_attention(q_rows, k_cache[slots], v_cache[slots], start_pos, scale, window)
        )
        q_start += n
    return q, k_cache, v_cache, spans, scale, torch.cat(expected)


SEQS = {
    "one-prefill": [(0, 6)],
    "one-decode": [(11, 1)],
    "mixed": [(0, 5), (9, 1), (3, 4), (0, 1), (20, 3)],
}


@pytest.mark.parametrize("seqs", list(SEQS), ids=list(SEQS))
@pytest.mark.parametrize("layout", ["slice", "index"])
@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("per_row", [False, True], ids=["batched", "per-row"])
def test_ragged_attention_matches_reference(seqs, layout, window, num_heads, num_kv_heads, per_row):
    q, k_cache, v_cache, spans, scale, expected = build_case(
        SEQS[seqs], layout, window, num_heads, num_kv_heads, per_row
    )
    out = ragged_attention(q, k_cache, v_cache, spans, scale)
    assert out.shape == q.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_spans_only_see_their_own_keys():
    """Changing another sequence's cache slots leaves a sequence's output untouched."""
    q, k_cache, v_cache, spans, scale, _ = build_case(SEQS["mixed"], "index", None, 4, 2)
    before = ragged_attention(q, k_cache, v_cache, spans, scale)
    seen = torch.cat([spans[0].kv_slots])
    others = torch.ones(k_cache.shape[0], dtype=torch.bool)
    others[seen] = False
    k_cache[others] += 1.0
    v_cache[others] -= 1.0
    after = ragged_attention(q, k_cache, v_cache, spans, scale)
    torch.testing.assert_close(after[: spans[0].q_end], before[: spans[0].q_end])
    assert not torch.allclose(after[spans[0].q_end :], before[spans[0].q_end :])


def test_write_kv_puts_each_token_in_its_slot():
    k_cache = torch.zeros(6, 1, 2)
    v_cache = torch.zeros(6, 1, 2)
    k = torch.arange(6.0).reshape(3, 1, 2)
    write_kv(k_cache, v_cache, k, -k, torch.tensor([4, 0, 5]))
    assert k_cache[:, 0].tolist() == [[2, 3], [0, 0], [0, 0], [0, 0], [0, 1], [4, 5]]
    torch.testing.assert_close(v_cache, -k_cache)


@pytest.mark.parametrize("window", [None, 3])
def test_per_row_attention_gives_a_query_the_same_bits_in_any_chunk(window):
    """A position verified among drafts or prefilled in a chunk gets exactly the output it
    gets when decoded alone (batch invariance: the basis of lossless greedy speculation)."""
    gen = torch.Generator().manual_seed(5)
    heads, kv_heads, dim, end = 4, 2, 16, 12
    k_cache = torch.randn(end, kv_heads, dim, generator=gen)
    v_cache = torch.randn(end, kv_heads, dim, generator=gen)
    q = torch.randn(end, heads, dim, generator=gen)  # the query of every position
    for start in range(end):  # a chunk covering positions start..end-1
        lo = 0 if window is None else max(0, start - window + 1)
        span = SeqSpan(
            0, end - start, slice(lo, end), None, row_keys(start, end - start, lo, window)
        )
        chunk = ragged_attention(q[start:], k_cache, v_cache, [span], 0.25)
        for pos in range(start, end):
            first = 0 if window is None else max(0, pos - window + 1)
            alone = SeqSpan(0, 1, slice(first, pos + 1), None)
            decode = ragged_attention(q[pos : pos + 1], k_cache, v_cache, [alone], 0.25)
            assert torch.equal(chunk[pos - start], decode[0]), (start, pos)


@pytest.mark.parametrize("seqs", list(SEQS), ids=list(SEQS))
@pytest.mark.parametrize("layout", ["slice", "index"])
@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (6, 1)])
def test_row_attention_kernel_matches_reference(seqs, layout, window, num_heads, num_kv_heads):
    """Our kernel: every row of every span against its keys, one call (`RowKeys`)."""
    assert native.available()
    q, k_cache, v_cache, spans, scale, expected = build_case(
        SEQS[seqs], layout, window, num_heads, num_kv_heads, per_row=True, head_dim=20
    )
    out = row_attention(q, k_cache, v_cache, RowKeys.of(spans), scale)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 3])
def test_row_attention_kernel_gives_a_query_the_same_bits_in_any_chunk(window):
    gen = torch.Generator().manual_seed(6)
    heads, kv_heads, dim, end = 4, 2, 64, 12
    k_cache = torch.randn(end, kv_heads, dim, generator=gen)
    v_cache = torch.randn(end, kv_heads, dim, generator=gen)
    q = torch.randn(end, heads, dim, generator=gen)
    for start in range(end):
        lo = 0 if window is None else max(0, start - window + 1)
        span = SeqSpan(
            0, end - start, slice(lo, end), None, row_keys(start, end - start, lo, window)
        )
        chunk = row_attention(q[start:], k_cache, v_cache, RowKeys.of([span]), 0.25)
        for pos in range(start, end):
            first = 0 if window is None else max(0, pos - window + 1)
            alone = RowKeys.of([SeqSpan(0, 1, slice(first, pos + 1), None)])
            assert torch.equal(
                chunk[pos - start],
                row_attention(q[pos : pos + 1], k_cache, v_cache, alone, 0.25)[0],
            ), (start, pos)


def test_row_attention_kernel_shares_keys_across_a_run_without_changing_a_bit():
    """A prefill chunk of 45 rows (cut into runs of at most 32), a verification of 5 and a
    decode in one call, with different key lists: every row as if alone."""
    gen = torch.Generator().manual_seed(8)
    heads, kv_heads, dim = 6, 2, 40
    k_cache = torch.randn(120, kv_heads, dim, generator=gen)
    v_cache = torch.randn(120, kv_heads, dim, generator=gen)
    q = torch.randn(51, heads, dim, generator=gen)
    spans = [
        SeqSpan(0, 45, slice(0, 45), None, row_keys(0, 45, 0, None)),
        SeqSpan(45, 50, torch.arange(60, 120, 2), None, row_keys(25, 5, 0, None)),
        SeqSpan(50, 51, slice(50, 53), None),
    ]
    together = row_attention(q, k_cache, v_cache, RowKeys.of(spans), 0.3)
    rows = RowKeys.of(spans)
    for r in range(51):
        keys = rows.slots[rows.offsets[r] : rows.offsets[r + 1]]
        alone = RowKeys(keys, torch.tensor([0, keys.numel()]))
        assert torch.equal(
            together[r], row_attention(q[r : r + 1], k_cache, v_cache, alone, 0.3)[0]
        ), r


def test_row_attention_kernel_rejects_bad_key_lists():
    q, k, v = torch.randn(2, 2, 8), torch.randn(5, 1, 8), torch.randn(5, 1, 8)
    with pytest.raises(RuntimeError, match="outside the cache"):
        row_attention(q, k, v, RowKeys(torch.tensor([0, 9]), torch.tensor([0, 1, 2])), 1.0)
    with pytest.raises(RuntimeError, match="at least one key"):
        row_attention(q, k, v, RowKeys(torch.tensor([0]), torch.tensor([0, 1, 1])), 1.0)


def _long_case(rows: int, keys: int, heads: int, kv_heads: int, dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(keys, kv_heads, dim, generator=gen)
    v_cache = torch.randn(keys, kv_heads, dim, generator=gen)
    q = torch.randn(rows, heads, dim, generator=gen) * 3  # wide scores: exp over ~[-80, 0]
    spans = [SeqSpan(0, rows, slice(0, keys), None, row_keys(keys - rows, rows, 0, None))]
    return q, k_cache, v_cache, RowKeys.of(spans), spans


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(12, 2, 128), (9, 3, 64), (4, 4, 20)])
def test_row_attention_kernel_is_accurate_over_long_contexts(heads, kv_heads, dim):
    q, k_cache, v_cache, rows, spans = _long_case(5, 700, heads, kv_heads, dim)
    out = row_attention(q, k_cache, v_cache, rows, dim**-0.5)
    expected = ragged_attention(
        q.double(), k_cache.double(), v_cache.double(), spans, dim**-0.5
    ).float()
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["avx2", "portable"])
def test_row_attention_every_build_gives_the_same_bits(variant):
    """Built without AVX-512, and without AVX2 (the 8-float vectors as two SSE halves): not
    one bit differs."""
    build = getattr(torch.ops, native.load(variant))
    q, k_cache, v_cache, rows, _ = _long_case(7, 300, 6, 2, 72, seed=1)
    vector = row_attention(q, k_cache, v_cache, rows, 0.1)
    assert torch.equal(
        vector, build.row_attention(q, k_cache, v_cache, rows.slots, rows.offsets, 0.1)
    )


@pytest.mark.parametrize("variant", ["native", "avx2", "portable"])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(12, 2, 128), (9, 3, 64), (4, 4, 20)])
def test_row_attention_on_a_float16_cache_is_the_float32_kernel_on_its_values(
    variant, heads, kv_heads, dim
):
    """A float16 cache's values are read as the floats they are: the bits of a float32 cache
    holding the same (rounded) values, in every build; and close to the unrounded cache."""
    q, k_cache, v_cache, rows, _ = _long_case(7, 300, heads, kv_heads, dim, seed=2)
    build = getattr(torch.ops, native.load(variant))
    half = build.row_attention(
        q, k_cache.half(), v_cache.half(), rows.slots, rows.offsets, dim**-0.5
    )
    rounded = row_attention(q, k_cache.half().float(), v_cache.half().float(), rows, dim**-0.5)
    assert torch.equal(half, rounded)
    exact = row_attention(q, k_cache, v_cache, rows, dim**-0.5)
    torch.testing.assert_close(half, exact, atol=1e-2, rtol=1e-2)


def test_row_attention_kernel_rejects_mixed_cache_dtypes():
    q, k, v = torch.randn(1, 2, 8), torch.randn(5, 1, 8), torch.randn(5, 1, 8)
    rows = RowKeys(torch.tensor([0, 1]), torch.tensor([0, 2]))
    with pytest.raises(RuntimeError, match="both float32 or both float16"):
        row_attention(q, k.half(), v, rows, 1.0)
    with pytest.raises(RuntimeError, match="both float32 or both float16"):
        row_attention(q, k.double(), v.double(), rows, 1.0)

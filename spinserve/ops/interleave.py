"""GGUF weights with 8 rows interleaved: the layout our kernels read fastest at several rows.

A GGUF keeps each weight row's super-blocks (256 weights) one after another. Here the same
bytes are rearranged once, at load time, into chunks of one super-block of 8 consecutive rows,
ordered so that each 32-byte load holds 4 consecutive weights of each of the 8 rows. One
unsigned x signed 4-byte dot product (AVX512-VNNI's dpbusd) then advances 8 output columns
at once; the sub-block scales are per row in the same lanes, so they are applied once per
sub-block as exact integer products, and no horizontal sum is left at the end
(``csrc/k_quants_x8.h``; docs/design.md, "Interleaved rows"). The 32-weight blocks
(Q5_0, Q8_0: the Qwen2.5-Coder-0.5B's 896-wide matrices; Q4_0, Q4_1) get the same treatment
(``csrc/small_blocks_x8.h``): a chunk is one block of 8 rows, and a row's 32 products are one
exact integer before its scale is applied, where the row layout needed a float multiply-add
per 4 weights and a horizontal sum.

The rearrangement is a bijection on the bytes: `deinterleave` gives back the GGUF's blocks
bit for bit (tested), so dequantizing and checking against gguf's reference go through it.

Chunk layouts (bytes; ``r`` the row in the group, ``j`` a sub-block, ``q`` a row's weights
as unsigned integers in column order):

- Q4_K (1184 = 8 x 148): ``d[r]``, ``dmin[r]`` (f16, 16 bytes each), ``sc[j][r]`` (64),
  ``m[j // 2][r][j % 2]`` (64), then for sub-block ``j`` of 32 and ``k`` in 0..3 the 32
  bytes ``[r][b]``: low nibble ``q[r][32j + 8k + b]``, high nibble ``q[r][32j + 8k + 4 + b]``.
  4 bytes per row more than the GGUF's 144: its 6-bit scales and mins as whole bytes.
- Q6_K (1680 = 8 x 210): ``d[r]`` (f16, 16), ``sc[j // 2][r][j % 2]`` (int8, 128), then for
  sub-block ``j`` of 16 three registers of 32 bytes ``[r][b]``: L0 (low nibbles of
  ``q[16j + b]``, high nibbles of ``q[16j + 8 + b]``), L1 (the same for ``16j + 4 + b`` and
  ``16j + 12 + b``) and H (the top 2 bits of those four values, in bit pairs 0, 1, 2, 3).
- Q8_0 (272 = 8 x 34): ``d[r]`` (f16, 16), then for ``k`` in 0..7 the 32 bytes ``[r][b]``:
  ``q[r][4k + b]`` (signed, as stored).
- Q5_0 (176 = 8 x 22): ``d[r]`` (f16, 16); for ``k`` in 0..3 the 32 bytes ``[r][b]``: low
  nibble the low 4 bits of ``q[r][8k + b]``, high nibble of ``q[r][8k + 4 + b]``; then for
  ``k`` in 0..3 and ``h`` in 0..1 a 32-bit mask (little-endian) whose bit ``4r + b`` is the
  fifth bit of ``q[r][8k + 4h + b]``: the byte lanes of that register that get 16 added.
- Q4_0 (144 = 8 x 18): ``d[r]``, then the nibbles as Q5_0's. Q4_1 (160 = 8 x 20): ``d[r]``,
  ``m[r]`` (f16, 16 each), then the nibbles as Q5_0's.
"""

from __future__ import annotations

import numpy as np

from spinserve.ops.formats import FORMATS, ID

ROWS = 8  # weight rows per chunk
# ggml's type numbers, and ours for the same blocks interleaved (1000 + the ggml number):
# both from the one table of formats (`spinserve.ops.formats`, csrc/formats.h)
Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K = (
    ID[n] for n in ("Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K")
)
Q4_0_X8, Q4_1_X8, Q5_0_X8, Q8_0_X8, Q4_K_X8, Q6_K_X8 = (
    ID[n] for n in ("Q4_0x8", "Q4_1x8", "Q5_0x8", "Q8_0x8", "Q4_Kx8", "Q6_Kx8")
)
BASE = {f.id: f.base for f in FORMATS.values() if f.rows == ROWS}
INTERLEAVED = {base: mixed for mixed, base in BASE.items()}
GGUF_BYTES = {base: FORMATS[base].bytes for base in INTERLEAVED}
# Q4_Kx8: 4 bytes per row more than Q4_K's 144, the 6-bit scales and mins as whole bytes
CHUNK_BYTES = {mixed: ROWS * FORMATS[mixed].bytes for mixed in BASE}


def can_interleave(qtype: int, out_features: int) -> bool:
    return qtype in INTERLEAVED and out_features % ROWS == 0


def interleave(blocks: np.ndarray, qtype: int) -> np.ndarray:
    """GGUF blocks [out, nb * bytes] of ``qtype`` (a key of `INTERLEAVED`) -> [out / 8,
    nb * chunk]."""
    out, row_bytes = blocks.shape
    if not can_interleave(qtype, out):
        raise ValueError(
            f"cannot interleave type {qtype} with {out} rows (a GGUF type of `INTERLEAVED`, "
            "8 | rows)"
        )
    nb = row_bytes // GGUF_BYTES[qtype]
    # [groups, nb, 8 rows, bytes]: a chunk's rows side by side
    b = blocks.reshape(out // ROWS, ROWS, nb, GGUF_BYTES[qtype]).transpose(0, 2, 1, 3)
    parts = _CHUNK[qtype](b)
    chunk = np.concatenate([p.reshape(*b.shape[:2], -1) for p in parts], axis=-1)
    return np.ascontiguousarray(chunk.reshape(out // ROWS, -1))


def deinterleave(chunks: np.ndarray, qtype: int) -> np.ndarray:
    """The inverse of `interleave`: [out / 8, nb * chunk] of ``qtype`` (a key of `BASE`) ->
    the GGUF's blocks [out, nb * bytes], byte for byte."""
    groups, row_bytes = chunks.shape
    nb = row_bytes // CHUNK_BYTES[qtype]
    c = chunks.reshape(groups, nb, CHUNK_BYTES[qtype])
    b = _BLOCKS[BASE[qtype]](c)  # [groups, nb, 8, bytes]
    return np.ascontiguousarray(b.transpose(0, 2, 1, 3).reshape(groups * ROWS, -1))


# Q4_K: f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) pairs, 128 bytes of nibbles (bytes
# 32i..32i+31: low nibbles are weights 64i.., high nibbles 64i + 32..).


def _q4_k_chunk(b: np.ndarray) -> list[np.ndarray]:
    s = b[..., 4:16].astype(np.uint8)
    sc = np.empty((*b.shape[:3], 8), np.uint8)
    mn = np.empty_like(sc)
    sc[..., :4] = s[..., 0:4] & 63
    mn[..., :4] = s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 0xF) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    qs = b[..., 16:].reshape(*b.shape[:3], 4, 32)
    q = np.concatenate([qs & 0xF, qs >> 4], axis=-1).reshape(*b.shape[:3], 256)  # column order
    # [.., j, k, half, b] -> bytes [j][k][r][b]: low nibble half 0, high nibble half 1
    q = q.reshape(*b.shape[:3], 8, 4, 2, 4)
    packed = q[..., 0, :] | (q[..., 1, :] << 4)  # [g, nb, r, j, k, b]
    return [
        b[..., 0:2],  # d[r]
        b[..., 2:4],  # dmin[r]
        sc.swapaxes(-1, -2),  # sc[j][r]
        mn.reshape(*mn.shape[:3], 4, 2).transpose(0, 1, 3, 2, 4),  # m[j // 2][r][j % 2]
        packed.transpose(0, 1, 3, 4, 2, 5),  # [j][k][r][b]
    ]


def _q4_k_blocks(c: np.ndarray) -> np.ndarray:
    g, nb = c.shape[:2]
    d = c[..., 0:16].reshape(g, nb, ROWS, 2)
    dmin = c[..., 16:32].reshape(g, nb, ROWS, 2)
    sc = c[..., 32:96].reshape(g, nb, 8, ROWS).swapaxes(-1, -2)  # [r][j]
    mn = c[..., 96:160].reshape(g, nb, 4, ROWS, 2).transpose(0, 1, 3, 2, 4).reshape(g, nb, ROWS, 8)
    packed = c[..., 160:].reshape(g, nb, 8, 4, ROWS, 4).transpose(0, 1, 4, 2, 3, 5)
    q = np.stack([packed & 0xF, packed >> 4], axis=-2).reshape(g, nb, ROWS, 4, 64)
    qs = q[..., :32] | (q[..., 32:] << 4)
    s = np.empty((g, nb, ROWS, 12), np.uint8)
    s[..., 0:4] = sc[..., :4] | ((sc[..., 4:] >> 4) << 6)
    s[..., 4:8] = mn[..., :4] | ((mn[..., 4:] >> 4) << 6)
    s[..., 8:12] = (sc[..., 4:] & 0xF) | ((mn[..., 4:] & 0xF) << 4)
    return np.concatenate([d, dmin, s, qs.reshape(g, nb, ROWS, 128)], axis=-1)


# Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 int8 scales, f16 d. For
# each half h of 128 weights and i < 32: ql[64h + i] holds weights 128h + i (low nibble) and
# 128h + 64 + i (high); ql[64h + 32 + i] weights 128h + 32 + i and 128h + 96 + i; qh[32h + i]
# the top bits of 128h + i, + 32 + i, + 64 + i, + 96 + i in bit pairs 0..3.


def _q6_k_values(b: np.ndarray) -> np.ndarray:
    ql = b[..., 0:128].reshape(*b.shape[:3], 2, 2, 32)  # [half, which 32, i]
    qh = b[..., 128:192].reshape(*b.shape[:3], 2, 1, 32)
    low = np.concatenate([ql & 0xF, ql >> 4], axis=-2)  # [half, 4 quarters, i]
    high = np.concatenate([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=-2)
    return (low | (high << 4)).reshape(*b.shape[:3], 256)


def _q6_k_chunk(b: np.ndarray) -> list[np.ndarray]:
    q = _q6_k_values(b).reshape(*b.shape[:3], 16, 4, 4)  # [g, nb, r, j, quad, b]
    l0 = (q[..., 0, :] & 0xF) | ((q[..., 2, :] & 0xF) << 4)
    l1 = (q[..., 1, :] & 0xF) | ((q[..., 3, :] & 0xF) << 4)
    h = (q[..., 0, :] >> 4) | ((q[..., 1, :] >> 4) << 2) | ((q[..., 2, :] >> 4) << 4)
    h = h | ((q[..., 3, :] >> 4) << 6)
    units = np.stack([l0, l1, h], axis=-2)  # [g, nb, r, j, 3, b]
    sc = b[..., 192:208].reshape(*b.shape[:3], 8, 2)
    return [
        b[..., 208:210],  # d[r]
        sc.transpose(0, 1, 3, 2, 4),  # sc[j // 2][r][j % 2]
        units.transpose(0, 1, 3, 4, 2, 5),  # [j][L0, L1, H][r][b]
    ]


def _q6_k_blocks(c: np.ndarray) -> np.ndarray:
    g, nb = c.shape[:2]
    d = c[..., 0:16].reshape(g, nb, ROWS, 2)
    sc = c[..., 16:144].reshape(g, nb, 8, ROWS, 2).transpose(0, 1, 3, 2, 4).reshape(g, nb, ROWS, 16)
    units = c[..., 144:].reshape(g, nb, 16, 3, ROWS, 4).transpose(0, 1, 4, 2, 3, 5)
    l0, l1, h = units[..., 0, :], units[..., 1, :], units[..., 2, :]  # [g, nb, r, j, b]
    quads = [
        (l0 & 0xF) | ((h & 3) << 4),
        (l1 & 0xF) | (((h >> 2) & 3) << 4),
        (l0 >> 4) | (((h >> 4) & 3) << 4),
        (l1 >> 4) | (((h >> 6) & 3) << 4),
    ]
    q = np.stack(quads, axis=-2).reshape(g, nb, ROWS, 2, 4, 32)  # [half, quarter, i]
    ql = (q[..., 0:2, :] & 0xF) | ((q[..., 2:4, :] & 0xF) << 4)
    qh = sum(((q[..., k, :] >> 4) & 3) << (2 * k) for k in range(4)).astype(np.uint8)
    return np.concatenate(
        [ql.reshape(g, nb, ROWS, 128), qh.reshape(g, nb, ROWS, 64), sc, d], axis=-1
    )


# Q8_0: f16 d, 32 signed bytes. Q5_0: f16 d, 32 bits qh (bit j: the fifth bit of weight j),
# 16 bytes qs (weight j < 16: low nibble of qs[j]; weight j + 16: its high nibble). Q4_0: f16
# d, qs. Q4_1: f16 d, f16 m, qs.


def _q8_0_chunk(b: np.ndarray) -> list[np.ndarray]:
    q = b[..., 2:].reshape(*b.shape[:3], 8, 4)  # [g, nb, r, k, b]
    return [b[..., 0:2], q.transpose(0, 1, 3, 2, 4)]  # d[r], [k][r][b]


def _q8_0_blocks(c: np.ndarray) -> np.ndarray:
    g, nb = c.shape[:2]
    d = c[..., 0:16].reshape(g, nb, ROWS, 2)
    q = c[..., 16:].reshape(g, nb, 8, ROWS, 4).transpose(0, 1, 3, 2, 4).reshape(g, nb, ROWS, 32)
    return np.concatenate([d, q], axis=-1)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """A block's 16 bytes qs [g, nb, r, 16] -> the chunk's 128 bytes [k][r][b]: low nibble
    the low 4 bits of weight 8k + b, high nibble of weight 8k + 4 + b."""
    low = np.concatenate([qs & 0xF, qs >> 4], axis=-1)  # the weights' low 4 bits, in order
    low = low.reshape(*qs.shape[:3], 4, 2, 4)  # [g, nb, r, k, h, b]
    return (low[..., 0, :] | (low[..., 1, :] << 4)).transpose(0, 1, 3, 2, 4)


def _qs(nibbles: np.ndarray) -> np.ndarray:
    """The inverse of `_nibbles`: [g, nb, 128] -> qs [g, nb, r, 16]."""
    g, nb = nibbles.shape[:2]
    n = nibbles.reshape(g, nb, 4, ROWS, 4).transpose(0, 1, 3, 2, 4)  # [r][k][b]
    low = np.stack([n & 0xF, n >> 4], axis=-2).reshape(g, nb, ROWS, 32)
    return low[..., :16] | (low[..., 16:] << 4)


def _q5_0_chunk(b: np.ndarray) -> list[np.ndarray]:
    bits = np.unpackbits(b[..., 2:6], axis=-1, bitorder="little")  # [g, nb, r, 32]
    fifth = bits.reshape(*b.shape[:3], 4, 2, 4).transpose(0, 1, 3, 4, 2, 5)  # [k][h][r][b]
    masks = np.packbits(fifth.reshape(*b.shape[:2], 4, 2, 32), axis=-1, bitorder="little")
    return [b[..., 0:2], _nibbles(b[..., 6:22]), masks]  # d[r], nibbles, masks [k][h]


def _q5_0_blocks(c: np.ndarray) -> np.ndarray:
    g, nb = c.shape[:2]
    d = c[..., 0:16].reshape(g, nb, ROWS, 2)
    fifth = np.unpackbits(c[..., 144:176].reshape(g, nb, 4, 2, 4), axis=-1, bitorder="little")
    bits = fifth.reshape(g, nb, 4, 2, ROWS, 4).transpose(0, 1, 4, 2, 3, 5).reshape(g, nb, ROWS, 32)
    qh = np.packbits(bits, axis=-1, bitorder="little")  # 4 bytes: bit j of weight j
    return np.concatenate([d, qh, _qs(c[..., 16:144])], axis=-1)


def _q4_0_chunk(b: np.ndarray) -> list[np.ndarray]:
    return [b[..., 0:2], _nibbles(b[..., 2:18])]  # d[r], nibbles


def _q4_0_blocks(c: np.ndarray) -> np.ndarray:
    d = c[..., 0:16].reshape(*c.shape[:2], ROWS, 2)
    return np.concatenate([d, _qs(c[..., 16:144])], axis=-1)


def _q4_1_chunk(b: np.ndarray) -> list[np.ndarray]:
    return [b[..., 0:2], b[..., 2:4], _nibbles(b[..., 4:20])]  # d[r], m[r], nibbles


def _q4_1_blocks(c: np.ndarray) -> np.ndarray:
    d = c[..., 0:16].reshape(*c.shape[:2], ROWS, 2)
    m = c[..., 16:32].reshape(*c.shape[:2], ROWS, 2)
    return np.concatenate([d, m, _qs(c[..., 32:160])], axis=-1)


_CHUNK = {
    Q4_0: _q4_0_chunk,
    Q4_1: _q4_1_chunk,
    Q5_0: _q5_0_chunk,
    Q8_0: _q8_0_chunk,
    Q4_K: _q4_k_chunk,
    Q6_K: _q6_k_chunk,
}
_BLOCKS = {
    Q4_0: _q4_0_blocks,
    Q4_1: _q4_1_blocks,
    Q5_0: _q5_0_blocks,
    Q8_0: _q8_0_blocks,
    Q4_K: _q4_k_blocks,
    Q6_K: _q6_k_blocks,
}

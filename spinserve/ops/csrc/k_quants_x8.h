// The k-quants' interleaved layouts (Q4_Kx8, Q6_Kx8: 8 weight rows per chunk), 256-bit passes
// and, where the CPU has AVX-512 VNNI, the wide 512-bit ones (wide.h). Included by
// k_quant_matmul.cpp alone, after k_quants.h.
#pragma once

#include "k_quants.h"
#include "wide.h"

namespace {

// The interleaved layouts (ops/interleave.py has the byte order): a chunk holds one
// super-block of 8 weight rows, arranged so that one 32-byte register holds 4 consecutive
// weights of each of the 8 rows. One u8 x s8 dot product of 4 (AVX512-VNNI's dpbusd, or
// maddubs + madd) then gives 8 rows' partial sums at once, in the lanes that are the 8 output
// columns: a sub-block's scale is applied once per sub-block and row, as an exact integer
// product, and no horizontal sum remains at the end. Per super-block and output column:
//   Q4_K: isum = sum_j sc_j * dot_j, csum = sum_j m_j * sum32_j (j: 8 sub-blocks of 32),
//         part = dA * float(isum) - dB * float(csum);
//   Q6_K: isum = sum_j sc_j * dot_j, csum = sum_j sc_j * sum16_j (j: 16 sub-blocks of 16),
//         part = d * float(isum - 32 * csum);
// and acc = acc + a.d * part, super-block after super-block: exact integers, then the same
// float operations in the same order on every path.
inline void q4_kx8_portable(const uint8_t* c, const ActBlock& a, float* acc) {
  const uint8_t* sc = c + 32;
  const uint8_t* mins = c + 96;
  const uint8_t* qs = c + 160;
  for (int r = 0; r < kX8; ++r) {
    int32_t isum = 0, csum = 0;
    for (int j = 0; j < 8; ++j) {
      int32_t dot = 0;
      for (int k = 0; k < 4; ++k) {
        const uint8_t* v = qs + 128 * j + 32 * k + 4 * r;
        const int8_t* x = a.q + 32 * j + 8 * k;
        for (int b = 0; b < 4; ++b) dot += (v[b] & 0xF) * x[b] + (v[b] >> 4) * x[4 + b];
      }
      isum += sc[8 * j + r] * dot;
      csum += mins[16 * (j / 2) + 2 * r + j % 2] * a.bsum32[j];
    }
    const float part = half_to_float(c + 2 * r) * static_cast<float>(isum) -
                       half_to_float(c + 16 + 2 * r) * static_cast<float>(csum);
    acc[r] = acc[r] + a.d * part;
  }
}

inline void q6_kx8_portable(const uint8_t* c, const ActBlock& a, float* acc) {
  const int8_t* sc = reinterpret_cast<const int8_t*>(c + 16);
  for (int r = 0; r < kX8; ++r) {
    int32_t isum = 0, csum = 0;
    for (int j = 0; j < 16; ++j) {
      const uint8_t* l0 = c + 144 + 96 * j + 4 * r;
      const uint8_t* l1 = l0 + 32;
      const uint8_t* h = l0 + 64;
      const int8_t* x = a.q + 16 * j;
      int32_t dot = 0;
      for (int b = 0; b < 4; ++b) {
        dot += ((l0[b] & 0xF) | ((h[b] & 3) << 4)) * x[b];
        dot += ((l1[b] & 0xF) | (((h[b] >> 2) & 3) << 4)) * x[4 + b];
        dot += ((l0[b] >> 4) | (((h[b] >> 4) & 3) << 4)) * x[8 + b];
        dot += ((l1[b] >> 4) | (((h[b] >> 6) & 3) << 4)) * x[12 + b];
      }
      const int32_t s = sc[16 * (j / 2) + 2 * r + j % 2];
      isum += s * dot;
      csum += s * a.bsum[j];
    }
    const float part = half_to_float(c + 2 * r) * static_cast<float>(isum - 32 * csum);
    acc[r] = acc[r] + a.d * part;
  }
}

#if defined(__AVX2__)
inline __m256 load_halves(const uint8_t* p) {
#if defined(__F16C__)
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  alignas(32) float f[8];
  for (int i = 0; i < 8; ++i) f[i] = half_to_float(p + 2 * i);
  return _mm256_load_ps(f);
#endif
}

inline __m256i pair_of(const int16_t* sums) {
  int32_t pair;
  std::memcpy(&pair, sums, 4);
  return _mm256_set1_epi32(pair);
}

// Software prefetch for the interleaved kernels: at 3 or more rows a pass is bound by its
// multiplies, and the hardware prefetcher alone left it waiting on memory between them. At 1-2
// rows it helps on some CPUs and costs nothing measurable on others, so every pass
// prefetches (docs/design.md, "Weights on CPU"). Each call asks for `lines` cache lines of the chunk
// kPrefetchChunks on, starting `offset` bytes into it; a kernel spreads the calls over its loop
// (prefetching past the weight's end is harmless: a prefetch never faults). 4 chunks on
// measured best of 2, 4, 6, 8, 12 (and of 4 and 8 for the wide passes).
constexpr int64_t kPrefetchChunks = 4;
inline void prefetch_ahead(const uint8_t* chunk, int64_t chunk_bytes, int64_t offset, int lines) {
  const char* p = reinterpret_cast<const char*>(chunk + kPrefetchChunks * chunk_bytes + offset);
  for (int i = 0; i < lines; ++i) _mm_prefetch(p + 64 * i, _MM_HINT_T0);
}

// 8 weight rows (one chunk per super-block, nb of them from w) times ROWS activation rows:
// out[8 r + i] += row r . weight row i. The nibbles are loaded and split once for all rows.
template <int ROWS>
void q4_kx8_rows(const uint8_t* w, int64_t nb, const ActBlock* act, int64_t stride, float* out) {
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i zero = _mm256_setzero_si256();
  __m256 acc[ROWS];
  for (int r = 0; r < ROWS; ++r) acc[r] = _mm256_load_ps(out + kX8 * r);
  for (int64_t blk = 0; blk < nb; ++blk) {
    const uint8_t* c = w + blk * kQ4KX8Bytes;
    __m256i isum[ROWS];
    for (int r = 0; r < ROWS; ++r) isum[r] = zero;
    for (int j = 0; j < 8; ++j) {
      prefetch_ahead(c, kQ4KX8Bytes, 160 * j, 3);  // 8 x 3 lines cover the 1,184 bytes
      const __m256i sc =
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + 32 + 8 * j)));
      __m256i t0[ROWS], t1[ROWS];
      for (int r = 0; r < ROWS; ++r) t0[r] = t1[r] = zero;
      for (int k = 0; k < 4; ++k) {
        const __m256i v = load32(c + 160 + 128 * j + 32 * k);
        const __m256i lo = _mm256_and_si256(v, low);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        for (int r = 0; r < ROWS; ++r) {
          const int8_t* x = act[r * stride + blk].q + 32 * j + 8 * k;
          t0[r] = dot4(t0[r], lo, x);
          t1[r] = dot4(t1[r], hi, x + 4);
        }
      }
      for (int r = 0; r < ROWS; ++r) {
        isum[r] = _mm256_add_epi32(isum[r], _mm256_mullo_epi32(_mm256_add_epi32(t0[r], t1[r]), sc));
      }
    }
    __m256i mins[4];
    for (int p = 0; p < 4; ++p) {
      mins[p] = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + 96 + 16 * p)));
    }
    const __m256 da = load_halves(c);
    const __m256 db = load_halves(c + 16);
    for (int r = 0; r < ROWS; ++r) {
      const ActBlock& a = act[r * stride + blk];
      __m256i csum = zero;
      for (int p = 0; p < 4; ++p) csum = add_scaled(csum, mins[p], pair_of(a.bsum32 + 2 * p));
      acc[r] = add_q4_k_part(acc[r], a.d, da, db, isum[r], csum);
    }
  }
  for (int r = 0; r < ROWS; ++r) _mm256_store_ps(out + kX8 * r, acc[r]);
}

// Lane i: (sc[2p], sc[2p + 1]) of weight row i in a Q6_Kx8 chunk, as int16.
inline __m256i scale_pairs(const uint8_t* chunk, int p) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(chunk + 16 + 16 * p)));
}

template <int ROWS>
void q6_kx8_rows(const uint8_t* w, int64_t nb, const ActBlock* act, int64_t stride, float* out) {
  const __m256i zero = _mm256_setzero_si256();
  __m256 acc[ROWS];
  for (int r = 0; r < ROWS; ++r) acc[r] = _mm256_load_ps(out + kX8 * r);
  for (int64_t blk = 0; blk < nb; ++blk) {
    const uint8_t* c = w + blk * kQ6KX8Bytes;
    // The offsets' sums (csum) beside the products for up to 4 rows, after them for more:
    // in the loop 8 rows' sums would hold 8 registers through it and spill.
    constexpr bool late = ROWS > 4;
    __m256i isum[ROWS], csum[ROWS];
    for (int r = 0; r < ROWS; ++r) isum[r] = csum[r] = zero;
    for (int p = 0; p < 8; ++p) {
      const __m256i pairs = scale_pairs(c, p);
      for (int r = 0; r < ROWS && !late; ++r) {
        csum[r] = add_scaled(csum[r], pairs, pair_of(act[r * stride + blk].bsum + 2 * p));
      }
      for (int half = 0; half < 2; ++half) {
        const int j = 2 * p + half;
        prefetch_ahead(c, kQ6KX8Bytes, 105 * j, 2);  // 16 x 2 lines cover the 1,680 bytes
        const __m256i sc = half ? _mm256_srai_epi32(pairs, 16)
                                : _mm256_srai_epi32(_mm256_slli_epi32(pairs, 16), 16);
        const uint8_t* u = c + 144 + 96 * j;
        const __m256i l0 = load32(u), l1 = load32(u + 32), h = load32(u + 64);
        __m256i q[4];
        q6_k_values(l0, l1, h, q);
        for (int r = 0; r < ROWS; ++r) {
          const int8_t* x = act[r * stride + blk].q + 16 * j;
          // one chain of 4 products per row: no zeroed second chain and no add to merge two
          // (exact in int32 either way)
          const __m256i t = dot4(dot4(dot4(dot4(zero, q[0], x), q[2], x + 8), q[1], x + 4), q[3], x + 12);
          isum[r] = _mm256_add_epi32(isum[r], _mm256_mullo_epi32(t, sc));
        }
      }
    }
    __m256i all_pairs[8];
    for (int p = 0; p < 8 && late; ++p) all_pairs[p] = scale_pairs(c, p);
    const __m256 d = load_halves(c);
    for (int r = 0; r < ROWS; ++r) {
      const ActBlock& a = act[r * stride + blk];
      for (int p = 0; p < 8 && late; ++p) {
        csum[r] = add_scaled(csum[r], all_pairs[p], pair_of(a.bsum + 2 * p));
      }
      const __m256i diff = _mm256_sub_epi32(isum[r], _mm256_slli_epi32(csum[r], 5));
      const __m256 part = _mm256_mul_ps(d, _mm256_cvtepi32_ps(diff));
      acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_set1_ps(a.d), part));
    }
  }
  for (int r = 0; r < ROWS; ++r) _mm256_store_ps(out + kX8 * r, acc[r]);
}

#if defined(SPINSERVE_WIDE)
// The wide passes (wide.h): two groups of 8 weight rows side by side, lanes 0-7 the first
// chunk's rows, 8-15 the second's; every lane does what it does in the 256-bit pass above,
// so the bits are the same. out[16 r + i] += row r . weight row i of the pair.
using spinserve_wide::dot4_wide;
using spinserve_wide::first_prefetch_base;
using spinserve_wide::halves_pair;
using spinserve_wide::load_pair;
using spinserve_wide::load_pair16;

template <int ROWS>
void q4_kx8_pair_rows(const uint8_t* w0, const uint8_t* w1, int64_t nb, const ActBlock* act,
                      int64_t stride, float* out) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __m512i zero = _mm512_setzero_si512();
  __m512 acc[ROWS];
  for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_load_ps(out + 2 * kX8 * r);
  for (int64_t blk = 0; blk < nb; ++blk) {
    const uint8_t* c0 = w0 + blk * kQ4KX8Bytes;
    const uint8_t* c1 = w1 + blk * kQ4KX8Bytes;
    const uint8_t* ahead0 = first_prefetch_base(c0, blk * kQ4KX8Bytes, kPrefetchChunks * kQ4KX8Bytes, nb * kQ4KX8Bytes);
    __m512i isum[ROWS];
    for (int r = 0; r < ROWS; ++r) isum[r] = zero;
    for (int j = 0; j < 8; ++j) {
      prefetch_ahead(ahead0, kQ4KX8Bytes, 160 * j, 3);
      prefetch_ahead(c1, kQ4KX8Bytes, 160 * j, 3);
      int64_t s0, s1;
      std::memcpy(&s0, c0 + 32 + 8 * j, 8);
      std::memcpy(&s1, c1 + 32 + 8 * j, 8);
      const __m512i sc = _mm512_cvtepu8_epi32(_mm_set_epi64x(s1, s0));
      __m512i t0[ROWS], t1[ROWS];
      for (int r = 0; r < ROWS; ++r) t0[r] = t1[r] = zero;
      for (int k = 0; k < 4; ++k) {
        const int64_t at = 160 + 128 * j + 32 * k;
        const __m512i v = load_pair(c0 + at, c1 + at);
        const __m512i lo = _mm512_and_si512(v, low);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        for (int r = 0; r < ROWS; ++r) {
          const int8_t* x = act[r * stride + blk].q + 32 * j + 8 * k;
          t0[r] = dot4_wide(t0[r], lo, x);
          t1[r] = dot4_wide(t1[r], hi, x + 4);
        }
      }
      for (int r = 0; r < ROWS; ++r) {
        isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(_mm512_add_epi32(t0[r], t1[r]), sc));
      }
    }
    __m512i mins[4];
    for (int p = 0; p < 4; ++p) mins[p] = _mm512_cvtepu8_epi16(load_pair16(c0 + 96 + 16 * p, c1 + 96 + 16 * p));
    const __m512 da = halves_pair(c0, c1);
    const __m512 db = halves_pair(c0 + 16, c1 + 16);
    for (int r = 0; r < ROWS; ++r) {
      const ActBlock& a = act[r * stride + blk];
      __m512i csum = zero;
      for (int p = 0; p < 4; ++p) {
        int32_t pair;
        std::memcpy(&pair, a.bsum32 + 2 * p, 4);
        csum = _mm512_dpwssd_epi32(csum, mins[p], _mm512_set1_epi32(pair));
      }
      const __m512 part = _mm512_sub_ps(_mm512_mul_ps(da, _mm512_cvtepi32_ps(isum[r])),
                                        _mm512_mul_ps(db, _mm512_cvtepi32_ps(csum)));
      acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_set1_ps(a.d), part));
    }
  }
  for (int r = 0; r < ROWS; ++r) _mm512_store_ps(out + 2 * kX8 * r, acc[r]);
}

template <int ROWS>
void q6_kx8_pair_rows(const uint8_t* w0, const uint8_t* w1, int64_t nb, const ActBlock* act,
                      int64_t stride, float* out) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __m512i two = _mm512_set1_epi8(0x30);
  __m512 acc[ROWS];
  for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_load_ps(out + 2 * kX8 * r);
  for (int64_t blk = 0; blk < nb; ++blk) {
    const uint8_t* c0 = w0 + blk * kQ6KX8Bytes;
    const uint8_t* c1 = w1 + blk * kQ6KX8Bytes;
    const uint8_t* ahead0 = first_prefetch_base(c0, blk * kQ6KX8Bytes, kPrefetchChunks * kQ6KX8Bytes, nb * kQ6KX8Bytes);
    __m512i isum[ROWS];
    for (int r = 0; r < ROWS; ++r) isum[r] = zero;
    for (int j = 0; j < 16; ++j) {
      prefetch_ahead(ahead0, kQ6KX8Bytes, 105 * j, 2);
      prefetch_ahead(c1, kQ6KX8Bytes, 105 * j, 2);
      const int p = j / 2;
      const __m512i pairs = _mm512_cvtepi8_epi16(load_pair16(c0 + 16 + 16 * p, c1 + 16 + 16 * p));
      const __m512i sc = (j % 2) ? _mm512_srai_epi32(pairs, 16)
                                 : _mm512_srai_epi32(_mm512_slli_epi32(pairs, 16), 16);
      const int64_t at = 144 + 96 * j;
      const __m512i l0 = load_pair(c0 + at, c1 + at);
      const __m512i l1 = load_pair(c0 + at + 32, c1 + at + 32);
      const __m512i h = load_pair(c0 + at + 64, c1 + at + 64);
      const __m512i q0 = _mm512_or_si512(_mm512_and_si512(l0, low),
                                         _mm512_and_si512(_mm512_slli_epi16(h, 4), two));
      const __m512i q1 = _mm512_or_si512(_mm512_and_si512(l1, low),
                                         _mm512_and_si512(_mm512_slli_epi16(h, 2), two));
      const __m512i q2 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l0, 4), low),
                                         _mm512_and_si512(h, two));
      const __m512i q3 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), low),
                                         _mm512_and_si512(_mm512_srli_epi16(h, 2), two));
      for (int r = 0; r < ROWS; ++r) {
        const int8_t* x = act[r * stride + blk].q + 16 * j;
        const __m512i t =
            dot4_wide(dot4_wide(dot4_wide(dot4_wide(zero, q0, x), q2, x + 8), q1, x + 4), q3, x + 12);
        isum[r] = _mm512_add_epi32(isum[r], _mm512_mullo_epi32(t, sc));
      }
    }
    __m512i all_pairs[8];
    for (int p = 0; p < 8; ++p) {
      all_pairs[p] = _mm512_cvtepi8_epi16(load_pair16(c0 + 16 + 16 * p, c1 + 16 + 16 * p));
    }
    const __m512 d = halves_pair(c0, c1);
    for (int r = 0; r < ROWS; ++r) {
      const ActBlock& a = act[r * stride + blk];
      __m512i csum = zero;
      for (int p = 0; p < 8; ++p) {
        int32_t pair;
        std::memcpy(&pair, a.bsum + 2 * p, 4);
        csum = _mm512_dpwssd_epi32(csum, all_pairs[p], _mm512_set1_epi32(pair));
      }
      const __m512i diff = _mm512_sub_epi32(isum[r], _mm512_slli_epi32(csum, 5));
      const __m512 part = _mm512_mul_ps(d, _mm512_cvtepi32_ps(diff));
      acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_set1_ps(a.d), part));
    }
  }
  for (int r = 0; r < ROWS; ++r) _mm512_store_ps(out + 2 * kX8 * r, acc[r]);
}
#endif  // SPINSERVE_WIDE
#endif

}  // namespace

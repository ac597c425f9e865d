// The 32-weight blocks' interleaved layouts (Q4_0x8 ... Q8_0x8: 8 weight rows per chunk):
// 256-bit passes and, where the CPU has AVX-512 VNNI, the wide 512-bit ones (wide.h), and the
// portable unpacking of a chunk. Included by small_matmul.cpp alone, after small_blocks.h.
#pragma once

#include "dot4.h"
#include "small_blocks.h"
#include "wide.h"

namespace {

#if defined(SPINSERVE_AVX2)
// ---- interleaved blocks: 8 weight rows (output columns) per chunk of one block each

// acc + per lane the dot of its 4 stored weight bytes in u with the 4 activation bytes at x:
// unsigned weights (Q4_0, Q4_1, Q5_0, and Q8_0 + 128 where AVX512-VNNI multiplies unsigned x
// signed), or Q8_0's signed bytes on AVX2 alone (|w| times x with w's sign, as in dot_avx2).
template <int64_t QTYPE>
inline __m256i dot4_x8(__m256i acc, __m256i u, const int8_t* x) {
#if !defined(SPINSERVE_VNNI)
  if constexpr (QTYPE == kQ8_0) {
    int32_t quad;
    std::memcpy(&quad, x, 4);
    const __m256i s = _mm256_set1_epi32(quad);
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(u, u), _mm256_sign_epi8(s, u));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
#endif
  return spinserve_dot4::dot4(acc, u, x);
}

// 8 weight rows (chunks of QTYPE x8, nb of them from w) times ROWS activation rows:
// out[8 r + i] = row r . weight row i. Each chunk's weights are loaded and unpacked once for
// all the rows; a (row, column) adds its blocks in order, each as fma(row scale x block scale,
// exact integer dot, sum) and for Q4_1 then + row scale x (min x the row's integer sum), as
// the portable code does. Two integer sums per row (the even and the odd 4 weights) keep two
// dot chains in flight.
template <int64_t QTYPE, int ROWS>
__attribute__((noinline)) void rows_x8_avx2(const Act* act, int64_t nb, const uint8_t* w,
                                            float* out) {
  constexpr int64_t bytes = 8 * block_bytes(QTYPE);
  const __m256i low = _mm256_set1_epi8(0x0F);
  __m256 acc[ROWS];
  for (int r = 0; r < ROWS; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* c = w + b * bytes;
    for (int64_t i = 0; i < bytes; i += 64) {  // see rows_avx2
      _mm_prefetch(reinterpret_cast<const char*>(c) + kPrefetchBytes + i, _MM_HINT_T0);
    }
    __m256i even[ROWS], odd[ROWS];
    for (int r = 0; r < ROWS; ++r) {
      even[r] = _mm256_set1_epi32(act[r * nb + b].block_base);  // the weights' offset
      odd[r] = _mm256_setzero_si256();
    }
    for (int k = 0; k < 4; ++k) {  // weights 8k..8k+3 and 8k+4..8k+7 of each column
      __m256i u0, u1;
      if constexpr (QTYPE == kQ8_0) {
        u0 = load32(c + 16 + 64 * k);
        u1 = load32(c + 48 + 64 * k);
#if defined(SPINSERVE_VNNI)
        const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));  // w + 128
        u0 = _mm256_xor_si256(u0, flip);
        u1 = _mm256_xor_si256(u1, flip);
#endif
      } else {
        const __m256i v = load32(c + nibbles_at(QTYPE) + 32 * k);
        u0 = _mm256_and_si256(v, low);
        u1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        if constexpr (QTYPE == kQ5_0) {
          u0 = add_fifth_bits(u0, c + 144 + 8 * k);
          u1 = add_fifth_bits(u1, c + 148 + 8 * k);
        }
      }
      for (int r = 0; r < ROWS; ++r) {
        const int8_t* x = act[r * nb + b].q + 8 * k;
        even[r] = dot4_x8<QTYPE>(even[r], u0, x);
        odd[r] = dot4_x8<QTYPE>(odd[r], u1, x + 4);
      }
    }
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
    __m256 m = _mm256_setzero_ps();
    if constexpr (QTYPE == kQ4_1) {
      m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + 16)));
    }
    for (int r = 0; r < ROWS; ++r) {
      const Act& a = act[r * nb + b];
      const __m256 row_d = _mm256_set1_ps(a.d);
      const __m256 dot = _mm256_cvtepi32_ps(_mm256_add_epi32(even[r], odd[r]));
      acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(row_d, d), dot, acc[r]);
      if constexpr (QTYPE == kQ4_1) acc[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(a.d_sum), acc[r]);
    }
  }
  for (int r = 0; r < ROWS; ++r) _mm256_storeu_ps(out + 8 * r, acc[r]);
}

#if defined(SPINSERVE_WIDE)
// The wide pass (wide.h): the chunks of two consecutive groups side by side, lanes 0-7 the
// first's weight rows, 8-15 the second's, each lane doing what it does in rows_x8_avx2 (the
// same bits). out[16 r + i] = row r . weight row i of the pair.
using spinserve_wide::dot4_wide;
using spinserve_wide::first_prefetch_base;
using spinserve_wide::halves_pair;
using spinserve_wide::load_pair;

template <int64_t QTYPE, int ROWS>
__attribute__((noinline)) void rows_x8_pair(const Act* act, int64_t nb, const uint8_t* w0,
                                            const uint8_t* w1, float* out) {
  constexpr int64_t bytes = 8 * block_bytes(QTYPE);
  const __m512i low = _mm512_set1_epi8(0x0F);
  const int64_t group_bytes = nb * bytes;
  __m512 acc[ROWS];
  for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* c0 = w0 + b * bytes;
    const uint8_t* c1 = w1 + b * bytes;
    const uint8_t* ahead0 = first_prefetch_base(c0, b * bytes, kPrefetchBytes, group_bytes);
    for (int64_t i = 0; i < bytes; i += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead0) + kPrefetchBytes + i, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c1) + kPrefetchBytes + i, _MM_HINT_T0);
    }
    __m512i even[ROWS], odd[ROWS];
    for (int r = 0; r < ROWS; ++r) {
      even[r] = _mm512_set1_epi32(act[r * nb + b].block_base);
      odd[r] = _mm512_setzero_si512();
    }
    for (int k = 0; k < 4; ++k) {
      __m512i u0, u1;
      if constexpr (QTYPE == kQ8_0) {
        const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));  // w + 128
        u0 = _mm512_xor_si512(load_pair(c0 + 16 + 64 * k, c1 + 16 + 64 * k), flip);
        u1 = _mm512_xor_si512(load_pair(c0 + 48 + 64 * k, c1 + 48 + 64 * k), flip);
      } else {
        const int64_t at = nibbles_at(QTYPE) + 32 * k;
        const __m512i v = load_pair(c0 + at, c1 + at);
        u0 = _mm512_and_si512(v, low);
        u1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        if constexpr (QTYPE == kQ5_0) {
          uint32_t m[4];
          std::memcpy(m, c0 + 144 + 8 * k, 8);
          std::memcpy(m + 2, c1 + 144 + 8 * k, 8);
          const __m512i sixteen = _mm512_set1_epi8(0x10);
          u0 = _mm512_mask_add_epi8(u0, m[0] | (uint64_t{m[2]} << 32), u0, sixteen);
          u1 = _mm512_mask_add_epi8(u1, m[1] | (uint64_t{m[3]} << 32), u1, sixteen);
        }
      }
      for (int r = 0; r < ROWS; ++r) {
        const int8_t* x = act[r * nb + b].q + 8 * k;
        even[r] = dot4_wide(even[r], u0, x);
        odd[r] = dot4_wide(odd[r], u1, x + 4);
      }
    }
    const __m512 d = halves_pair(c0, c1);
    __m512 m = _mm512_setzero_ps();
    if constexpr (QTYPE == kQ4_1) m = halves_pair(c0 + 16, c1 + 16);
    for (int r = 0; r < ROWS; ++r) {
      const Act& a = act[r * nb + b];
      const __m512 row_d = _mm512_set1_ps(a.d);
      const __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(even[r], odd[r]));
      acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(row_d, d), dot, acc[r]);
      if constexpr (QTYPE == kQ4_1) acc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(a.d_sum), acc[r]);
    }
  }
  for (int r = 0; r < ROWS; ++r) _mm512_storeu_ps(out + 16 * r, acc[r]);
}

template <int64_t QTYPE, int... R>
constexpr auto pair_functions(std::integer_sequence<int, R...>) {
  using Pair = void (*)(const Act*, int64_t, const uint8_t*, const uint8_t*, float*);
  return std::array<Pair, sizeof...(R)>{rows_x8_pair<QTYPE, R + 1>...};
}
#endif  // SPINSERVE_WIDE

// Activation rows from which the wide pass runs where it pays (wide.h; below that a pass
// waits on memory, not on its multiplies).
constexpr int64_t kWideMinRows = 4;

template <int64_t QTYPE>
void matmul_groups_avx2(const Act* act, int64_t rows, int64_t nb, const uint8_t* chunks,
                        int64_t g_begin, int64_t g_end, int64_t n_out, float* y) {
  constexpr auto kRows = row_functions<QTYPE, true>(std::make_integer_sequence<int, kTileRows>());
  const int64_t group_bytes = nb * 8 * block_bytes(QTYPE);
  alignas(64) float out[kTileRows * 16];
#if defined(SPINSERVE_WIDE)
  const bool wide = rows >= kWideMinRows && SPINSERVE_OPS::wide_mode() == 1;
#endif
  for (int64_t g = g_begin; g < g_end; ++g) {
#if defined(SPINSERVE_WIDE)
    if (wide && g + 1 < g_end) {
      constexpr auto kPairs =
          pair_functions<QTYPE>(std::make_integer_sequence<int, kTileRows>());
      const uint8_t* first = chunks + g * group_bytes;
      for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
        const int64_t tile = std::min<int64_t>(kTileRows, rows - r0);
        kPairs[tile - 1](act + r0 * nb, nb, first, first + group_bytes, out);
        for (int64_t r = 0; r < tile; ++r) {
          std::memcpy(y + (r0 + r) * n_out + 8 * g, out + 16 * r, 16 * sizeof(float));
        }
      }
      ++g;
      continue;
    }
#endif
    for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
      const int64_t tile = std::min<int64_t>(kTileRows, rows - r0);
      kRows[tile - 1](act + r0 * nb, nb, chunks + g * group_bytes, out);
      for (int64_t r = 0; r < tile; ++r) {
        std::memcpy(y + (r0 + r) * n_out + 8 * g, out + 8 * r, 8 * sizeof(float));
      }
    }
  }
}
#endif

// Weight row i of an interleaved chunk (`ops/interleave.py`) as signed values, scale, min.
void unpack_x8(int64_t qtype, const uint8_t* c, int i, Weights& w) {
  w.d = half_to_float(c + 2 * i);
  w.m = qtype == kQ4_1 ? half_to_float(c + 16 + 2 * i) : 0.0f;
  const int32_t off = qtype == kQ5_0 ? 16 : (qtype == kQ4_0 ? 8 : 0);
  for (int k = 0; k < (qtype == kQ8_0 ? 8 : 4); ++k) {
    uint32_t m0 = 0, m1 = 0;  // Q5_0's fifth bits
    if (qtype == kQ5_0) {
      std::memcpy(&m0, c + 144 + 8 * k, 4);
      std::memcpy(&m1, c + 148 + 8 * k, 4);
    }
    for (int t = 0; t < 4; ++t) {
      const uint8_t byte = c[nibbles_at(qtype) + 32 * k + 4 * i + t];
      if (qtype == kQ8_0) {
        w.w[4 * k + t] = static_cast<int8_t>(byte);
        continue;
      }
      const int bit = 4 * i + t;
      w.w[8 * k + t] = ((byte & 0x0F) | (((m0 >> bit) & 1) << 4)) - off;
      w.w[8 * k + 4 + t] = ((byte >> 4) | (((m1 >> bit) & 1) << 4)) - off;
    }
  }
}

}  // namespace

// y = x W^T with W kept in GGUF's 32-weight blocks (Q8_0, Q5_0, Q4_0, Q4_1), any number of rows.
//
// The companion of block_matmul.cpp for the formats llama.cpp uses where rows are not whole
// 256-weight super-blocks (Qwen2.5-Coder-0.5B's 896-wide matrices are Q5_0 and Q8_0). Same
// scheme: activations rounded per row and per 32 columns to int8 (scale max|x| / 127, round
// half to even: llama.cpp's Q8_0 activations), each weight block unpacked once per row tile
// and multiplied into every row with exact integer dot products, one per 4 columns (8 lanes),
// a lane's integer turned into a float and added to the row's lane sums in column order, times
// the product of the block's and the row's scales, in one fused multiply-add (std::fma on the
// portable path; no other contraction: -ffp-contract=off). So a value depends only
// on its own row of x and of W: batch-invariant, and the same bits on every code path.
//
// The integer dots are of the weights as stored, unsigned (Q5_0: 0..31, Q4_0: 0..15, Q8_0:
// its signed byte + 128 where AVX512-VNNI multiplies unsigned x signed bytes in one
// instruction), minus offset x (the lane's sum of rounded activations), so each lane holds
// the exact dot of the signed weights. The activation block carries those lane terms ready.
//
// Each type also comes with 8 weight rows interleaved (Q4_0x8 ... Q8_0x8: `ops/interleave.py`),
// which is what the loader keeps: one 4-byte dot (dpbusd) then advances 8 output columns, a
// column's 32 products of a block are one exact integer, and its scale is applied once per
// block, as one fused multiply-add per row and block for 8 columns (the row layout needed one
// per 4 weights, and a horizontal sum). The row layout stays for row counts not a multiple of 8.
//
// This file has the formats' blocks, the activation rounding and the row layout's kernels;
// small_blocks_x8.h the interleaved ones; small_matmul.cpp the driver, which alone includes
// them (internal linkage).
#pragma once

#include "formats.h"
#include "half.h"
#include "lanes.h"
#include "quantize.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SPINSERVE_AVX2 1
#endif

namespace {

using spinserve_half::half_to_float;
using spinserve_lanes::sum_lanes;

constexpr int64_t kQK = 32;
constexpr int64_t kRowTile = 32;
constexpr int kLanes = 8;
// The formats' ids and block sizes (formats.h): ggml's numbers, and ours with 8 weight rows
// interleaved (Q4_0x8 ... Q8_0x8).
using spinserve_formats::kQ4_0;
using spinserve_formats::kQ4_1;
using spinserve_formats::kQ5_0;
using spinserve_formats::kQ8_0;
constexpr bool interleaved(int64_t qtype) { return spinserve_formats::interleaved(qtype); }
// Where an interleaved chunk's nibbles start (after the scales, and Q4_1's mins).
constexpr int64_t nibbles_at(int64_t qtype) { return qtype == kQ4_1 ? 32 : 16; }
constexpr int64_t base_type(int64_t qtype) { return spinserve_formats::base(qtype); }

#if defined(SPINSERVE_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define SPINSERVE_VNNI 1
#endif

// Bytes per block of a 32-weight GGUF type (0 for any other type).
constexpr int64_t block_bytes(int64_t qtype) {
  return spinserve_formats::k_quant(qtype) ? 0 : spinserve_formats::bytes(qtype);
}

// What the stored weight value u exceeds the signed one by (w = u - offset). Q8_0 stores w
// itself; the VNNI path multiplies u = w + 128 (AVX2's maddubs would saturate on it, so that
// path multiplies |w| by x with w's sign instead: offset 0). The integer is the same.
constexpr int32_t offset(int64_t qtype) {
  switch (base_type(qtype)) {
    case kQ5_0: return 16;
    case kQ4_0: return 8;
#if defined(SPINSERVE_VNNI)
    case kQ8_0: return 128;
#endif
    default: return 0;
  }
}

// A row's 32 rounded activations with their scale, their sum, and where the integer dots
// start: per lane of 4 columns, -offset x their sum, and for a whole block -offset x the sum.
// Q4_1's min term is m x (d x sum) for each weight's min m, so d x sum (rounded once) is kept
// too: one fused multiply-add per block and row in every path (d x (m x sum) takes a
// conversion, a broadcast and two products more).
struct alignas(32) Act {
  int8_t q[kQK];
  int32_t base[kLanes];
  float d;
  int32_t sum;
  int32_t block_base;
  float d_sum;
};

void quantize(const float* x, int32_t offset, Act& a) {
  int32_t sums[kQK / 16];
  a.d = spinserve_quantize::quantize_int8(x, kQK, a.q, sums);
  a.sum = sums[0] + sums[1];
  a.block_base = -offset * a.sum;
  a.d_sum = a.d * static_cast<float>(a.sum);
#if defined(__AVX2__)
  // each lane's 4 bytes summed by two multiply-adds by ones (exact integers)
  const __m256i pairs = _mm256_maddubs_epi16(
      _mm256_set1_epi8(1), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q)));
  const __m256i fours = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.base),
                      _mm256_mullo_epi32(fours, _mm256_set1_epi32(-offset)));
#else
  for (int l = 0; l < kLanes; ++l) {
    const int8_t* q = a.q + 4 * l;
    a.base[l] = -offset * (int32_t{q[0]} + int32_t{q[1]} + int32_t{q[2]} + int32_t{q[3]});
  }
#endif
}

// A weight block as its 32 signed values with its scale d and (Q4_1) min m.
struct Weights {
  int32_t w[kQK];
  float d, m;
};

void unpack(int64_t qtype, const uint8_t* b, Weights& w) {
  w.d = half_to_float(b);
  w.m = 0.0f;
  if (qtype == kQ8_0) {
    for (int64_t i = 0; i < kQK; ++i) w.w[i] = static_cast<int8_t>(b[2 + i]);
    return;
  }
  const uint8_t* qs = b + 2;
  uint32_t qh = 0;
  if (qtype == kQ4_1) {
    w.m = half_to_float(b + 2);
    qs = b + 4;
  } else if (qtype == kQ5_0) {
    std::memcpy(&qh, b + 2, 4);
    qs = b + 6;
  }
  const int32_t off = offset(qtype);  // Q5_0 16, Q4_0 8, Q4_1 0 (Q8_0 returned above)
  for (int j = 0; j < 16; ++j) {
    w.w[j] = ((qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10)) - off;
    w.w[j + 16] = ((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - off;
  }
}

// A block's product with one row, added to the row's 8 float lanes (lane l: the exact dot of
// columns 4l..4l+3) and, for Q4_1, to `extra` (m x the row's sum). The vector code does the
// same operations in the same order.
inline void accumulate_portable(int64_t qtype, const Weights& w, const Act& a, float* lanes,
                                float& extra) {
  for (int l = 0; l < kLanes; ++l) {
    int32_t dot = 0;
    for (int t = 0; t < 4; ++t) dot += w.w[4 * l + t] * int32_t{a.q[4 * l + t]};
    lanes[l] = std::fma(a.d * w.d, static_cast<float>(dot), lanes[l]);
  }
  if (qtype == kQ4_1) extra = std::fma(w.m, a.d_sum, extra);
}

inline float finish(int64_t qtype, const float* lanes, float extra) {
  const float total = sum_lanes(lanes);
  return qtype == kQ4_1 ? total + extra : total;
}

#if defined(SPINSERVE_AVX2)
inline __m256i load32(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// q with 16 added to each byte lane i whose bit i is set in the 32-bit mask at p: Q5_0's fifth
// bits, set on values 0..15.
inline __m256i add_fifth_bits(__m256i q, const uint8_t* p) {
  uint32_t mask;
  std::memcpy(&mask, p, 4);
#if defined(__AVX512BW__) && defined(__AVX512VL__)
  return _mm256_mask_add_epi8(q, static_cast<__mmask32>(mask), q, _mm256_set1_epi8(0x10));
#else
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(mask)),
      _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
#endif
}

// The block's 32 stored values u (unsigned, or Q8_0's signed bytes on the AVX2 path).
template <int64_t QTYPE>
inline __m256i load_avx2(const uint8_t* b) {
  if constexpr (QTYPE == kQ8_0) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
#if defined(SPINSERVE_VNNI)
    return _mm256_xor_si256(w, _mm256_set1_epi8(static_cast<char>(0x80)));  // w + 128
#else
    return w;
#endif
  }
  const uint8_t* qs = b + (QTYPE == kQ4_1 ? 4 : (QTYPE == kQ5_0 ? 6 : 2));
  // the 16 bytes in both halves, the high half shifted down by a nibble: values 0..15
  const __m256i bytes =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  __m256i q = _mm256_and_si256(_mm256_srlv_epi64(bytes, _mm256_set_epi64x(4, 4, 0, 0)),
                               _mm256_set1_epi8(0x0F));
  if constexpr (QTYPE == kQ5_0) q = add_fifth_bits(q, b + 2);  // bit j of qh: value j's bit 4
  return q;
}

// The exact lane dots of the signed weights with one activation block: base + u . x.
template <int64_t QTYPE>
inline __m256i dot_avx2(__m256i u, const Act& a) {
  const __m256i x = _mm256_load_si256(reinterpret_cast<const __m256i*>(a.q));
  const __m256i base = _mm256_load_si256(reinterpret_cast<const __m256i*>(a.base));
#if defined(SPINSERVE_VNNI)
  return _mm256_dpbusd_epi32(base, u, x);
#else
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (QTYPE == kQ8_0) {  // |w| x (x with w's sign); |w| <= 128, |x| <= 127
    return _mm256_madd_epi16(
        _mm256_maddubs_epi16(_mm256_sign_epi8(u, u), _mm256_sign_epi8(x, u)), ones);
  }
  // u <= 31, |x| <= 127: the pair sums never saturate int16
  return _mm256_add_epi32(base, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), ones));
#endif
}

// One weight row (output column) x ROWS activation rows, the sums kept in registers across
// the blocks (its own function, so that they stay there): through memory each block's add
// waited on the last one's store, and one row of the 0.5B's 4864x896 Q5_0 product ran at
// ~12 GB/s (15 here). Each (column, row) adds its blocks in order, as the portable code does.
// (Two columns at a time, for two independent chains, measured slower.)
// Prefetches reach 8 KiB ahead: with 8 rows a pass spends longer on each block, and 2 KiB
// ahead no longer kept enough of the weight in flight to cover the memory's latency (the
// distances tried are in docs/design.md).
constexpr int64_t kPrefetchBytes = 8192;
template <int64_t QTYPE, int ROWS>
__attribute__((noinline)) void rows_avx2(const Act* act, int64_t nb, const uint8_t* w,
                                         float* out) {
  constexpr int64_t bytes = block_bytes(QTYPE);
  __m256 acc[ROWS];
  float extra[ROWS];
  for (int r = 0; r < ROWS; ++r) {
    acc[r] = _mm256_setzero_ps();
    extra[r] = 0.0f;
  }
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* block = w + b * bytes;
    // the line kPrefetchBytes on is asked for ahead: at 3 or more rows the pass is bound by
    // its multiplies and waited on memory between them, and on Zen 5 a decode too (see
    // block_matmul.cpp's prefetch_ahead)
    _mm_prefetch(reinterpret_cast<const char*>(block) + kPrefetchBytes, _MM_HINT_T0);
    const __m256i u = load_avx2<QTYPE>(block);
    // the fp16 scale in all 8 lanes (exact)
    int16_t h;
    std::memcpy(&h, block, 2);
    const __m256 d = _mm256_cvtph_ps(_mm_set1_epi16(h));
    const float m = QTYPE == kQ4_1 ? half_to_float(block + 2) : 0.0f;
    for (int r = 0; r < ROWS; ++r) {
      const Act& a = act[r * nb + b];
      const __m256 scale = _mm256_mul_ps(_mm256_set1_ps(a.d), d);
      acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot_avx2<QTYPE>(u, a)), acc[r]);
      if constexpr (QTYPE == kQ4_1) extra[r] = std::fma(m, a.d_sum, extra[r]);
    }
  }
  alignas(32) float lanes[kLanes];
  for (int r = 0; r < ROWS; ++r) {
    _mm256_store_ps(lanes, acc[r]);
    out[r] = finish(QTYPE, lanes, extra[r]);
  }
}

// Rows per pass over a weight row: AVX-512's 32 vector registers hold 8 rows' sums, AVX2's 16
// hold 4.
#if defined(__AVX512VL__)
constexpr int kTileRows = 8;
#else
constexpr int kTileRows = 4;
#endif

template <int64_t QTYPE, int ROWS>
void rows_x8_avx2(const Act* act, int64_t nb, const uint8_t* w, float* out);  // below

// The kernels for 1..kTileRows rows of one layout: row by row, or 8 weight rows interleaved.
template <int64_t QTYPE, bool X8, int... R>
constexpr auto row_functions(std::integer_sequence<int, R...>) {
  using Rows = void (*)(const Act*, int64_t, const uint8_t*, float*);
  if constexpr (X8) {
    return std::array<Rows, sizeof...(R)>{rows_x8_avx2<QTYPE, R + 1>...};
  } else {
    return std::array<Rows, sizeof...(R)>{rows_avx2<QTYPE, R + 1>...};
  }
}

template <int64_t QTYPE>
void matmul_cols_avx2(const Act* act, int64_t rows, int64_t nb, const uint8_t* blocks,
                      int64_t n_begin, int64_t n_end, int64_t n_out, float* y) {
  constexpr auto kRows =
      row_functions<QTYPE, false>(std::make_integer_sequence<int, kTileRows>());
  const int64_t row_bytes = nb * block_bytes(QTYPE);
  float out[kTileRows];
  for (int64_t n = n_begin; n < n_end; ++n) {
    for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
      const int64_t tile = std::min<int64_t>(kTileRows, rows - r0);
      kRows[tile - 1](act + r0 * nb, nb, blocks + n * row_bytes, out);
      for (int64_t r = 0; r < tile; ++r) y[(r0 + r) * n_out + n] = out[r];
    }
  }
}
#endif  // SPINSERVE_AVX2

}  // namespace

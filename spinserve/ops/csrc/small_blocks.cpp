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
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "dot4.h"
#include "half.h"
#include "lanes.h"
#include "many.h"
#include "namespace.h"
#include "quantize.h"
#include "wide.h"

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
enum QType : int64_t { kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ8_0 = 8 };  // ggml's numbers
// ours: 8 weight rows interleaved, 1000 + the ggml number (Q4_0x8 = 1002, ..., Q8_0x8 = 1008)
constexpr int64_t kX8 = 1000;
constexpr bool interleaved(int64_t qtype) {
  return qtype == kX8 + kQ4_0 || qtype == kX8 + kQ4_1 || qtype == kX8 + kQ5_0 ||
         qtype == kX8 + kQ8_0;
}
// Where an interleaved chunk's nibbles start (after the scales, and Q4_1's mins).
constexpr int64_t nibbles_at(int64_t qtype) { return qtype == kQ4_1 ? 32 : 16; }
constexpr int64_t base_type(int64_t qtype) { return interleaved(qtype) ? qtype - kX8 : qtype; }

#if defined(SPINSERVE_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define SPINSERVE_VNNI 1
#endif

constexpr int64_t block_bytes(int64_t qtype) {
  switch (qtype) {
    case kQ8_0: return 34;
    case kQ5_0: return 22;
    case kQ4_0: return 18;
    case kQ4_1: return 20;
    default: return 0;
  }
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
// too: one fused multiply-add per block and row in every path (d x (m x sum) took a
// conversion, a broadcast and two products more; SmolLM2's 8-token step 0.96x the time).
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
// (Two columns at a time, for two independent chains, measured slower: 0.40 against 0.20 ms.)
// Prefetches reach 8 KiB ahead: against 2 KiB, the 0.5B's step 0.93x the time for a decode and
// 0.95x for 8 tokens, SmolLM2's 0.95x and 0.99x (kernel_ab, Zen 5; 4 KiB 0.94-0.98x, 16 KiB
// 0.97-1.01x): with 8 rows a pass spends longer on each block, and 2 KiB ahead no longer
// kept enough of the weight in flight to cover the memory's latency.
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
  const bool wide = rows >= kWideMinRows && spinserve_wide::mode() == 1;
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

void matmul_groups(const Act* act, int64_t rows, int64_t nb, const uint8_t* chunks,
                   int64_t qtype, int64_t g_begin, int64_t g_end, int64_t n_out, float* y,
                   bool portable) {
#if defined(SPINSERVE_AVX2)
  if (!portable) {
    switch (qtype) {
      case kQ8_0: return matmul_groups_avx2<kQ8_0>(act, rows, nb, chunks, g_begin, g_end, n_out, y);
      case kQ5_0: return matmul_groups_avx2<kQ5_0>(act, rows, nb, chunks, g_begin, g_end, n_out, y);
      case kQ4_0: return matmul_groups_avx2<kQ4_0>(act, rows, nb, chunks, g_begin, g_end, n_out, y);
      default: return matmul_groups_avx2<kQ4_1>(act, rows, nb, chunks, g_begin, g_end, n_out, y);
    }
  }
#endif
  // each chunk unpacked once per tile of rows; a (row, column) adds its blocks in order, as
  // the vector code does
  const int64_t chunk_bytes = 8 * block_bytes(qtype);
  Weights w[8];
  float acc[kRowTile][8];
  for (int64_t g = g_begin; g < g_end; ++g) {
    for (int64_t r0 = 0; r0 < rows; r0 += kRowTile) {
      const int64_t tile = std::min(kRowTile, rows - r0);
      std::memset(acc, 0, sizeof(acc));
      for (int64_t b = 0; b < nb; ++b) {
        for (int i = 0; i < 8; ++i) unpack_x8(qtype, chunks + (g * nb + b) * chunk_bytes, i, w[i]);
        for (int64_t r = 0; r < tile; ++r) {
          const Act& a = act[(r0 + r) * nb + b];
          for (int i = 0; i < 8; ++i) {
            int32_t dot = 0;
            for (int t = 0; t < kQK; ++t) dot += w[i].w[t] * int32_t{a.q[t]};
            float& sum = acc[r][i];
            sum = std::fma(a.d * w[i].d, static_cast<float>(dot), sum);
            if (qtype == kQ4_1) sum = std::fma(w[i].m, a.d_sum, sum);
          }
        }
      }
      for (int64_t r = 0; r < tile; ++r) {
        std::memcpy(y + (r0 + r) * n_out + 8 * g, acc[r], 8 * sizeof(float));
      }
    }
  }
}

void matmul_cols(const Act* act, int64_t rows, int64_t nb, const uint8_t* blocks, int64_t qtype,
                 int64_t n_begin, int64_t n_end, int64_t n_out, float* y, bool portable) {
#if defined(SPINSERVE_AVX2)
  if (!portable) {
    switch (qtype) {
      case kQ8_0: return matmul_cols_avx2<kQ8_0>(act, rows, nb, blocks, n_begin, n_end, n_out, y);
      case kQ5_0: return matmul_cols_avx2<kQ5_0>(act, rows, nb, blocks, n_begin, n_end, n_out, y);
      case kQ4_0: return matmul_cols_avx2<kQ4_0>(act, rows, nb, blocks, n_begin, n_end, n_out, y);
      default: return matmul_cols_avx2<kQ4_1>(act, rows, nb, blocks, n_begin, n_end, n_out, y);
    }
  }
#endif
  const int64_t bytes = block_bytes(qtype);
  Weights w;
  float lanes[kRowTile][kLanes];
  float extra[kRowTile];
  for (int64_t r0 = 0; r0 < rows; r0 += kRowTile) {
    const int64_t tile = std::min(kRowTile, rows - r0);
    for (int64_t n = n_begin; n < n_end; ++n) {
      const uint8_t* row = blocks + n * nb * bytes;
      std::memset(lanes, 0, static_cast<size_t>(tile) * sizeof(lanes[0]));
      std::memset(extra, 0, static_cast<size_t>(tile) * sizeof(extra[0]));
      for (int64_t b = 0; b < nb; ++b) {
        unpack(qtype, row + b * bytes, w);
        for (int64_t r = 0; r < tile; ++r) {
          accumulate_portable(qtype, w, act[(r0 + r) * nb + b], lanes[r], extra[r]);
        }
      }
      for (int64_t r = 0; r < tile; ++r) y[(r0 + r) * n_out + n] = finish(qtype, lanes[r], extra[r]);
    }
  }
}

// One weight of a `small_block_matmul_many` call, checked against x's width.
struct SmallWeight {
  at::Tensor blocks;  // contiguous
  int64_t qtype, base, n_out;
  bool x8;
  int64_t units() const { return x8 ? n_out / 8 : n_out; }  // groups of 8 columns, or columns
};

SmallWeight check_weight(const at::Tensor& blocks, int64_t qtype, int64_t n_out, int64_t nb) {
  TORCH_CHECK(blocks.scalar_type() == at::kByte && blocks.dim() == 2, "blocks must be 2-D uint8");
  const bool x8 = interleaved(qtype);
  const int64_t base = base_type(qtype), bytes = block_bytes(base);
  TORCH_CHECK(bytes > 0, "unsupported block type ", qtype);
  TORCH_CHECK(!x8 || n_out % 8 == 0, "interleaved blocks need n_out % 8 == 0, got ", n_out);
  const int64_t rows_out = x8 ? n_out / 8 : n_out, row_bytes = nb * bytes * (x8 ? 8 : 1);
  TORCH_CHECK(blocks.size(0) == rows_out && blocks.size(1) == row_bytes, "blocks have shape [",
              blocks.size(0), ", ", blocks.size(1), "], expected [", rows_out, ", ", row_bytes,
              "]");
  return SmallWeight{blocks.contiguous(), qtype, base, n_out, x8};
}

// y_i = x W_i^T for weights of the same input width: x is rounded once per distinct weight
// offset (the lane terms depend on it: Q5_0 and Q8_0 differ), and one parallel loop runs over
// all their output columns, as block_matmul_many does for the k-quants (in a decode step of
// SmolLM2 a 192-column k or v projection is a few microseconds, its own fork/join and rounding
// a good part of that). Each value is the same bits as from a call of its own.
std::vector<at::Tensor> small_block_matmul_many(const at::Tensor& x, at::TensorList blocks,
                                                at::IntArrayRef qtypes, at::IntArrayRef n_outs,
                                                bool portable) {
  const size_t count = blocks.size();
  const int64_t nb =
      spinserve_many::blocks_per_row(x, count, qtypes.size(), n_outs.size(), kQK);
  const int64_t rows = x.size(0);
  std::vector<SmallWeight> weights;
  std::vector<at::Tensor> outs;
  std::vector<int64_t> first{0};  // first unit of each weight in the joint range
  for (size_t i = 0; i < count; ++i) {
    weights.push_back(check_weight(blocks[i], qtypes[i], n_outs[i], nb));
    outs.push_back(at::empty({rows, n_outs[i]}, x.options()));
    first.push_back(first.back() + weights.back().units());
  }
  if (rows == 0 || first.back() == 0) return outs;
  const at::Tensor xc = x.contiguous();
  const float* xp = xc.data_ptr<float>();
  // the rounded rows for each distinct offset
  std::vector<int32_t> offsets;
  std::vector<at::Tensor> bufs;
  std::vector<const Act*> act_of(count);
  for (size_t i = 0; i < count; ++i) {
    const int32_t off = offset(weights[i].qtype);
    const auto found = std::find(offsets.begin(), offsets.end(), off);
    const size_t slot = static_cast<size_t>(found - offsets.begin());
    if (found == offsets.end()) {
      offsets.push_back(off);
      bufs.push_back(
          at::empty({rows * nb * static_cast<int64_t>(sizeof(Act))}, weights[i].blocks.options()));
      auto* act = reinterpret_cast<Act*>(bufs.back().data_ptr<uint8_t>());
      at::parallel_for(0, rows * nb, 256, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) quantize(xp + j * kQK, off, act[j]);
      });
    }
    act_of[i] = reinterpret_cast<const Act*>(bufs[slot].data_ptr<uint8_t>());
  }
  at::parallel_for(0, first.back(), 2, [&](int64_t begin, int64_t end) {
    for (size_t i = 0; i < count; ++i) {
      const int64_t lo = std::max(begin, first[i]) - first[i];
      const int64_t hi = std::min(end, first[i + 1]) - first[i];
      if (lo >= hi) continue;
      const SmallWeight& w = weights[i];
      const uint8_t* bp = w.blocks.data_ptr<uint8_t>();
      float* yp = outs[i].data_ptr<float>();
      if (w.x8) {
        matmul_groups(act_of[i], rows, nb, bp, w.base, lo, hi, w.n_out, yp, portable);
      } else {
        matmul_cols(act_of[i], rows, nb, bp, w.qtype, lo, hi, w.n_out, yp, portable);
      }
    }
  });
  return outs;
}

at::Tensor small_block_matmul(const at::Tensor& x, const at::Tensor& blocks, int64_t qtype,
                              int64_t n_out, bool portable) {
  return small_block_matmul_many(x, {blocks}, {qtype}, {n_out}, portable)[0];
}

int64_t small_block_wide(int64_t mode) { return spinserve_wide::set_mode(static_cast<int>(mode)); }

}  // namespace

SPINSERVE_FRAGMENT(SPINSERVE_OPS, m) {
  // The wide passes (wide.h): set 0 or 1, or -1 to measure again; returns the mode before.
  m.def("small_block_wide(int mode) -> int", &small_block_wide);
  m.def("small_block_matmul(Tensor x, Tensor blocks, int qtype, int n_out, bool portable) -> "
        "Tensor");
  m.impl("small_block_matmul", c10::DispatchKey::CPU, &small_block_matmul);
  m.def("small_block_matmul_many(Tensor x, Tensor[] blocks, int[] qtypes, int[] n_outs, "
        "bool portable) -> Tensor[]");
  m.impl("small_block_matmul_many", c10::DispatchKey::CPU, &small_block_matmul_many);
}

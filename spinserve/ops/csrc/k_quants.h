// y = x W^T with W kept in its GGUF k-quant blocks (Q4_K, Q6_K), for any number of rows of x.
//
// Why our own kernel: speculative verification multiplies a few rows (the draft tokens) by
// every weight, and torch's CPU int4/int8 kernels cost a matrix-vector product per row. Here
// each weight super-block (256 weights) is read from memory once per call and its values are
// rebuilt in registers once per group of up to 8 rows (AVX2 maddubs; AVX-512 VNNI's dpwssd
// where the CPU has it), so the weights' memory traffic is paid once, not once per row.
// The loader gives most matrices in the interleaved layout (8 weight rows per chunk,
// Q4_Kx8/Q6_Kx8 of formats.h; k_quants_x8.h and docs/design.md "Interleaved rows"): one dpbusd then advances 8 output
// columns; the GGUF's row-by-row layout (Q4_K/Q6_K) stays for row counts that are not multiples
// of 8.
//
// Numerics (docs/design.md, "Our block kernels"):
// - activations are rounded per row and per 256 columns to int8 (scale = max|x| / 127,
//   round half to even), with the sum of each 16 rounded values, like llama.cpp's Q8_K;
// - a super-block's dot product is 8 exact integer lane sums, turned into floats once per
//   super-block and added into 8 float lanes in column order with plain (uncontracted)
//   float ops; the lanes are summed in a fixed tree at the end (interleaved: the super-block's
//   integers per column become one float, added in column order, no lanes).
// So every output value depends only on its own row of x and row of W: the same bits whatever
// rows share the call, however the output columns are split across threads, and whichever
// path (AVX2, AVX-512, portable C++) ran.
//
// This file: the k-quant super-blocks in GGUF's row layout: activations
// rounded to int8, the weight blocks unpacked, and one weight row's dot products with up to a
// pass of activation rows (AVX2 / AVX-512 VNNI, and the portable C++ that does the same
// operations in the same order). Included by k_quant_matmul.cpp alone (internal linkage), with
// k_quants_x8.h, the interleaved layouts.
#pragma once

#include "dot4.h"
#include "formats.h"
#include "half.h"
#include "lanes.h"
#include "quantize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

using spinserve_half::half_to_float;
using spinserve_lanes::sum_lanes;
#if defined(__AVX2__)
using spinserve_dot4::dot4;
#endif

constexpr int64_t kQK = 256;     // weights per super-block
constexpr int64_t kSub = 16;     // sub-blocks of 16 per super-block
constexpr int64_t kRowTile = 32; // activation rows per pass over a weight row (portable)
// The formats' ids and block sizes (formats.h); the interleaved ones hold 8 weight rows per
// chunk (ops/interleave.py).
constexpr int64_t kQ4K = spinserve_formats::kQ4_K, kQ6K = spinserve_formats::kQ6_K;
constexpr int64_t kQ4KX8 = spinserve_formats::kQ4_Kx8, kQ6KX8 = spinserve_formats::kQ6_Kx8;
constexpr int64_t kQ4KBytes = spinserve_formats::bytes(kQ4K);
constexpr int64_t kQ6KBytes = spinserve_formats::bytes(kQ6K);
constexpr int64_t kX8 = 8;  // weight rows per chunk
// d[8], dmin[8] f16, sc[8][8], m[4][8][2], qs
constexpr int64_t kQ4KX8Bytes = spinserve_formats::chunk_bytes(kQ4KX8);
// d[8] f16, sc[8][8][2], 16 x (L0, L1, H)
constexpr int64_t kQ6KX8Bytes = spinserve_formats::chunk_bytes(kQ6KX8);
static_assert(kQ4KBytes == 144 && kQ6KBytes == 210 && kQ4KX8Bytes == 8 * 148 &&
              kQ6KX8Bytes == 8 * kQ6KBytes, "the layouts below are of these sizes");

// One row's activations for one super-block, quantized.
struct ActBlock {
  alignas(32) int8_t q[kQK];
  int16_t bsum[kSub];  // sum of each 16 quantized values
  int16_t bsum32[8];   // sum of each 32 (Q4_K's sub-blocks, for the interleaved layout)
  float d;             // scale: x ~ d * q
};

// One weight super-block unpacked: value = dA * sc[j] * q - dB * c[j] for sub-block j.
struct WeightBlock {
  alignas(32) uint8_t q[kQK];  // 0..63
  alignas(32) int16_t sc[kQK / 2];  // sc of each pair of columns (maddubs lanes)
  alignas(32) int16_t c[kSub];
  float dA, dB;
  bool combined;  // dA == dB by format (Q6_K): the integer parts are subtracted first
};

void quantize_block(const float* x, ActBlock& out) {
  int32_t sums[kSub];
  out.d = spinserve_quantize::quantize_int8(x, kQK, out.q, sums);
  for (int64_t j = 0; j < kSub; ++j) out.bsum[j] = static_cast<int16_t>(sums[j]);
  for (int64_t j = 0; j < 8; ++j) out.bsum32[j] = static_cast<int16_t>(sums[2 * j] + sums[2 * j + 1]);
}

// Q4_K's 12 bytes of 6-bit (scale, min) pairs -> 8 scales then 8 mins, as four little-endian
// words of bytes (llama.cpp's bit layout). Always inlined: a call here, in the kernels' block
// loop, went through the stack and stalled the vector load after it.
__attribute__((always_inline)) inline void q4_k_scale_words(const uint8_t* s, uint32_t* out) {
  uint32_t u[3];
  std::memcpy(u, s, 12);
  const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
  out[0] = u[0] & k1;
  out[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
  out[2] = u[1] & k1;
  out[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
}

inline void q4_k_scales(const uint8_t* s, uint8_t* sc, uint8_t* m) {
  uint32_t out[4];
  q4_k_scale_words(s, out);
  std::memcpy(sc, out, 8);
  std::memcpy(m, out + 2, 8);
}

// Q4_K: f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) for 8 sub-blocks of 32, 128 bytes of
// nibbles (bytes 32i..32i+31: low nibbles are sub-block 2i, high nibbles 2i+1).
void unpack_q4_k(const uint8_t* b, WeightBlock& w) {
  w.dA = half_to_float(b);
  w.dB = half_to_float(b + 2);
  w.combined = false;
  uint8_t sc[8], m[8];
  q4_k_scales(b + 4, sc, m);
  const uint8_t* qs = b + 16;
  for (int j = 0; j < 8; ++j) {
    for (int i = 0; i < 16; ++i) w.sc[16 * j + i] = sc[j];
    w.c[2 * j] = w.c[2 * j + 1] = m[j];
  }
  for (int chunk = 0; chunk < 4; ++chunk) {
    for (int i = 0; i < 32; ++i) {
      const uint8_t byte = qs[32 * chunk + i];
      w.q[64 * chunk + i] = byte & 0xF;
      w.q[64 * chunk + 32 + i] = byte >> 4;
    }
  }
}

// Q6_K: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 int8 scales (one per 16),
// f16 d; value = d * scale * (q - 32).
void unpack_q6_k(const uint8_t* b, WeightBlock& w) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  w.dA = w.dB = half_to_float(b + 208);
  w.combined = true;
  for (int j = 0; j < kSub; ++j) {
    for (int i = 0; i < 8; ++i) w.sc[8 * j + i] = scales[j];
    w.c[j] = static_cast<int16_t>(32 * scales[j]);
  }
  for (int half = 0; half < 2; ++half) {
    const uint8_t* l = ql + 64 * half;
    const uint8_t* hb = qh + 32 * half;
    uint8_t* q = w.q + 128 * half;
    for (int i = 0; i < 32; ++i) {
      q[i] = (l[i] & 0xF) | (((hb[i] >> 0) & 3) << 4);
      q[i + 32] = (l[i + 32] & 0xF) | (((hb[i] >> 2) & 3) << 4);
      q[i + 64] = (l[i] >> 4) | (((hb[i] >> 4) & 3) << 4);
      q[i + 96] = (l[i + 32] >> 4) | (((hb[i] >> 6) & 3) << 4);
    }
  }
}

// A super-block's dot product for one row, as 8 exact integer lane sums (the lanes of
// AVX2's maddubs + madd: lane l holds columns 32j + 4l .. 32j + 4l + 3 of every 32), turned
// into floats and added into 8 float lane accumulators; the lanes are summed once per output.
// The portable code below does the same operations in the same order as the vector code.
constexpr int kLanes = 8;

inline void accumulate_portable(const WeightBlock& w, const ActBlock& a, float* acc) {
  for (int l = 0; l < kLanes; ++l) {
    int32_t isum = 0;
    for (int64_t j = 0; j < kQK / 32; ++j) {
      int32_t lane = 0;
      for (int t = 0; t < 4; t += 2) {
        const int64_t i = 32 * j + 4 * l + t;
        lane += w.sc[i / 2] * (w.q[i] * a.q[i] + w.q[i + 1] * a.q[i + 1]);
      }
      isum += lane;
    }
    const int32_t csum = w.c[2 * l] * a.bsum[2 * l] + w.c[2 * l + 1] * a.bsum[2 * l + 1];
    const float part = w.combined ? w.dA * static_cast<float>(isum - csum)
                                  : w.dA * static_cast<float>(isum) - w.dB * static_cast<float>(csum);
    acc[l] = acc[l] + a.d * part;
  }
}

#if defined(__AVX2__)
inline float reduce_lanes_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_shuffle_ps(s, s, 0x4E));
  s = _mm_add_ps(s, _mm_shuffle_ps(s, s, 0xB1));
  return _mm_cvtss_f32(s);
}

// acc + madd(p, sc): one instruction where AVX512-VNNI is there (same exact integers).
inline __m256i add_scaled(__m256i acc, __m256i p, __m256i sc) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpwssd_epi32(acc, p, sc);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc));
#endif
}

inline __m256i load32(const void* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// q4_k_scale_words' four words in one register, computed in it: [u0, u2, u1, u2] and
// [u0, u0, u1, u1] give out = (those >> [0, 0, 0, 4]) & [k1, k2, k1, k2] | (the second >> 2) &
// [0, k3 << 4, 0, k3 << 4]. Reads 16 bytes from s (the 12 scale bytes and 4 of the nibbles).
// ~8 vector instructions instead of ~30 scalar ones and moves, per super-block.
inline __m128i q4_k_scales_avx2(const uint8_t* s) {
  const __m128i u = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
  const __m128i p = _mm_shuffle_epi32(u, _MM_SHUFFLE(2, 1, 2, 0));
  const __m128i q = _mm_shuffle_epi32(u, _MM_SHUFFLE(1, 1, 0, 0));
  const __m128i low = _mm_and_si128(_mm_srlv_epi32(p, _mm_setr_epi32(0, 0, 0, 4)),
                                    _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
  const __m128i high =
      _mm_and_si128(_mm_srli_epi32(q, 2), _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
  return _mm_or_si128(low, high);
}

// A shuffle that fills the low 128 bits with int16 element `lo` and the high with `hi`.
inline __m256i pick_pair(int lo, int hi) {
  const char l0 = static_cast<char>(2 * lo), l1 = static_cast<char>(2 * lo + 1);
  const char h0 = static_cast<char>(2 * hi), h1 = static_cast<char>(2 * hi + 1);
  return _mm256_setr_epi8(l0, l1, l0, l1, l0, l1, l0, l1, l0, l1, l0, l1, l0, l1, l0, l1, h0, h1,
                          h0, h1, h0, h1, h0, h1, h0, h1, h0, h1, h0, h1, h0, h1);
}

inline __m256i c_times_bsum(__m256i c, const ActBlock& a) {
  return _mm256_madd_epi16(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bsum)));
}

// acc + a_d * (da * float(isum) - db * float(csum)): a Q4_K super-block's part of 8 lanes.
inline __m256 add_q4_k_part(__m256 acc, float a_d, __m256 da, __m256 db, __m256i isum,
                            __m256i csum) {
  const __m256 part = _mm256_sub_ps(_mm256_mul_ps(da, _mm256_cvtepi32_ps(isum)),
                                    _mm256_mul_ps(db, _mm256_cvtepi32_ps(csum)));
  return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(a_d), part));
}

// Q6_K's 6-bit values from 32 bytes of low nibbles l0, 32 more l1 and 32 of high bit pairs h:
// low and high nibbles of l0 with bit pairs 0 and 2 of h, those of l1 with pairs 1 and 3.
inline void q6_k_values(__m256i l0, __m256i l1, __m256i h, __m256i* q) {
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i two = _mm256_set1_epi8(0x30);
  q[0] = _mm256_or_si256(_mm256_and_si256(l0, low), _mm256_and_si256(_mm256_slli_epi16(h, 4), two));
  q[1] = _mm256_or_si256(_mm256_and_si256(l1, low), _mm256_and_si256(_mm256_slli_epi16(h, 2), two));
  q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low), _mm256_and_si256(h, two));
  q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low),
                         _mm256_and_si256(_mm256_srli_epi16(h, 2), two));
}

// One weight row's dot products with ROWS activation rows (act + r * stride) over nb
// super-blocks, added to the rows' float lane sums (lanes + 8 r), kept in registers meanwhile.
// Q4_K: the nibbles are loaded and split once per 64 columns for all ROWS rows.
template <int ROWS>
void q4_k_rows(const uint8_t* w, int64_t nb, const ActBlock* act, int64_t stride, float* lanes) {
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i dup = _mm256_setr_epi8(0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 8, 9, 8,
                                       9, 10, 11, 10, 11, 12, 13, 12, 13, 14, 15, 14, 15);
  __m256 acc[ROWS];
  for (int r = 0; r < ROWS; ++r) acc[r] = _mm256_load_ps(lanes + kLanes * r);
  for (int64_t blk = 0; blk < nb; ++blk) {
    const uint8_t* b = w + blk * kQ4KBytes;
    // 8 scales, 8 mins. Decoded in vector registers for up to 4 rows, in scalar ones for
    // more: with 8 rows' accumulators live, the vector form competes for registers.
    __m128i words;
    if constexpr (ROWS <= 4) {
      words = q4_k_scales_avx2(b + 4);
    } else {
      uint32_t sm[4];
      q4_k_scale_words(b + 4, sm);
      words = _mm_setr_epi32(static_cast<int>(sm[0]), static_cast<int>(sm[1]),
                             static_cast<int>(sm[2]), static_cast<int>(sm[3]));
    }
    const __m256i both = _mm256_cvtepu8_epi16(words);
    const __m256i scales = _mm256_permute2x128_si256(both, both, 0x00);
    // c: the min of each 16 columns (its 32-column sub-block's), as int16 lanes 0..15.
    const __m256i c = _mm256_shuffle_epi8(_mm256_permute2x128_si256(both, both, 0x11), dup);
    // Two independent sums per row (exact integers: any order) halve the dependency chain.
    __m256i isum[ROWS], isum2[ROWS];
    for (int r = 0; r < ROWS; ++r) isum[r] = isum2[r] = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      const __m256i v = load32(b + 16 + 32 * j);
      const __m256i qlo = _mm256_and_si256(v, low);
      const __m256i qhi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
      const __m256i slo = _mm256_shuffle_epi8(scales, pick_pair(2 * j, 2 * j));
      const __m256i shi = _mm256_shuffle_epi8(scales, pick_pair(2 * j + 1, 2 * j + 1));
      for (int r = 0; r < ROWS; ++r) {
        const int8_t* x = act[r * stride + blk].q + 64 * j;
        isum[r] = add_scaled(isum[r], _mm256_maddubs_epi16(qlo, load32(x)), slo);
        isum2[r] = add_scaled(isum2[r], _mm256_maddubs_epi16(qhi, load32(x + 32)), shi);
      }
    }
    for (int r = 0; r < ROWS; ++r) isum[r] = _mm256_add_epi32(isum[r], isum2[r]);
    const __m256 da = _mm256_set1_ps(half_to_float(b));
    const __m256 db = _mm256_set1_ps(half_to_float(b + 2));
    for (int r = 0; r < ROWS; ++r) {
      const ActBlock& a = act[r * stride + blk];
      acc[r] = add_q4_k_part(acc[r], a.d, da, db, isum[r], c_times_bsum(c, a));
    }
  }
  for (int r = 0; r < ROWS; ++r) _mm256_store_ps(lanes + kLanes * r, acc[r]);
}

// Q6_K likewise: the 6-bit values are rebuilt in registers, 32 columns at a time.
template <int ROWS>
void q6_k_rows(const uint8_t* w, int64_t nb, const ActBlock* act, int64_t stride, float* lanes) {
  __m256 acc[ROWS];
  for (int r = 0; r < ROWS; ++r) acc[r] = _mm256_load_ps(lanes + kLanes * r);
  for (int64_t blk = 0; blk < nb; ++blk) {
    const uint8_t* b = w + blk * kQ6KBytes;
    const __m256i s16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)));
    // Two independent sums per row (exact integers: any order) halve the dependency chain.
    __m256i isum[ROWS], isum2[ROWS];
    for (int r = 0; r < ROWS; ++r) isum[r] = isum2[r] = _mm256_setzero_si256();
    for (int half = 0; half < 2; ++half) {
      const __m256i l0 = load32(b + 64 * half);
      const __m256i l1 = load32(b + 64 * half + 32);
      const __m256i h = load32(b + 128 + 32 * half);
      const __m256i sc8 = half ? _mm256_permute2x128_si256(s16, s16, 0x11)
                               : _mm256_permute2x128_si256(s16, s16, 0x00);
      __m256i qs[4];
      q6_k_values(l0, l1, h, qs);
      for (int p = 0; p < 4; ++p) {
        const __m256i sc = _mm256_shuffle_epi8(sc8, pick_pair(2 * p, 2 * p + 1));
        for (int r = 0; r < ROWS; ++r) {
          const int8_t* x = act[r * stride + blk].q + 128 * half + 32 * p;
          __m256i& sum = (ROWS <= 2 && p % 2) ? isum2[r] : isum[r];
          sum = add_scaled(sum, _mm256_maddubs_epi16(qs[p], load32(x)), sc);
        }
      }
    }
    for (int r = 0; r < ROWS; ++r) isum[r] = _mm256_add_epi32(isum[r], isum2[r]);
    const __m256i c = _mm256_slli_epi16(s16, 5);
    const __m256 d = _mm256_set1_ps(half_to_float(b + 208));
    for (int r = 0; r < ROWS; ++r) {
      const ActBlock& a = act[r * stride + blk];
      const __m256i diff = _mm256_sub_epi32(isum[r], c_times_bsum(c, a));
      const __m256 part = _mm256_mul_ps(d, _mm256_cvtepi32_ps(diff));
      acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_set1_ps(a.d), part));
    }
  }
  for (int r = 0; r < ROWS; ++r) _mm256_store_ps(lanes + kLanes * r, acc[r]);
}
#endif  // __AVX2__

}  // namespace

// y = x W^T with W kept in its GGUF k-quant blocks (Q4_K, Q6_K), for any number of rows of x.
//
// Why our own kernel: speculative verification multiplies a few rows (the draft tokens) by
// every weight, and torch's CPU int4/int8 kernels cost a matrix-vector product per row. Here
// each weight super-block (256 weights) is read from memory once per call and its values are
// rebuilt in registers once per group of up to 8 rows (AVX2 maddubs; AVX-512 VNNI's dpwssd
// where the CPU has it), so the weights' memory traffic is paid once, not once per row.
// The loader gives most matrices in the interleaved layout (8 weight rows per chunk, types
// 1012/1014, below and docs/design.md "Interleaved rows"): one dpbusd then advances 8 output
// columns; the GGUF's row-by-row layout (12/14) stays for row counts that are not multiples
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
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

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
constexpr int64_t kQ4KBytes = 144;
constexpr int64_t kQ6KBytes = 210;
enum QType : int64_t { kQ4K = 12, kQ6K = 14 }; // ggml's type numbers
// Our interleaved layouts of the same blocks (ops/interleave.py): 8 weight rows per chunk.
enum QTypeX8 : int64_t { kQ4KX8 = 1012, kQ6KX8 = 1014 };
constexpr int64_t kX8 = 8;                   // weight rows per chunk
constexpr int64_t kQ4KX8Bytes = 8 * 148;     // d[8], dmin[8] f16, sc[8][8], m[4][8][2], qs
constexpr int64_t kQ6KX8Bytes = 8 * kQ6KBytes;  // d[8] f16, sc[8][8][2], 16 x (L0, L1, H)

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
// loop, went through the stack and stalled the vector load after it (2.5x slower, measured).
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
    // 8 scales, 8 mins. Decoded in vector registers for up to 4 rows (1 row: 3-5% faster),
    // in scalar ones for more (the vector form measured 1-4% slower at 8 rows, A/B per call).
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
// multiplies, and the hardware prefetcher alone left it waiting on memory between them (a
// 256 MB stream of Q4_Kx8 chunks at 8 rows, 2 threads: 18.1 ms, 12.2 with this). At 1-2 rows
// it was level or a few percent slower on Zen 4 and 0.84-0.91x the time of a decode on Zen 5
// (session 11), so every pass prefetches. Each call asks for `lines` cache lines of the chunk
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
    // there they would hold 8 registers through the loop and spill (5-8% faster at 1-2 rows
    // in the loop, 4-10% at 8 rows after it; call for call, the 1.5B's down and lm_head).
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
          // one chain of 4 products per row: no zeroed second chain, no add (10% faster hot
          // than two chains of 2, in the wide pass; exact in int32 either way)
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

// Rows sharing one pass over a weight row (AVX-512 machines have 32 vector registers to
// hold 8 rows' sums; AVX2's 16 fit 4).
#if defined(__AVX512VL__)
constexpr int kGroup = 8;
#else
constexpr int kGroup = 4;
#endif
#if defined(__AVX2__)
constexpr bool kVector = true;  // the AVX2 / AVX-512 kernels are built
#else
constexpr bool kVector = false;
#endif
using Unpack = void (*)(const uint8_t*, WeightBlock&);
using Rows = void (*)(const uint8_t*, int64_t, const ActBlock*, int64_t, float*);
using Portable8 = void (*)(const uint8_t*, const ActBlock&, float*);
// A wide pass: two chunks' rows (the groups at the first two pointers) side by side.
using Pair = void (*)(const uint8_t*, const uint8_t*, int64_t, const ActBlock*, int64_t, float*);
// Activation rows from which the interleaved kernels run the wide pass where it pays (below
// that a pass waits on memory, not on its multiplies).
constexpr int64_t kWideMinRows = 4;

struct Format {
  int64_t block_bytes;  // per super-block: of one weight row, or of 8 when interleaved
  Unpack unpack;        // portable path (one weight row's blocks)
  Rows rows[kGroup];    // AVX2 path, for 1..group rows at once
  // Rows per pass (<= kGroup), the fastest measured: the row layout's 8-row Q6_K kernel runs
  // out of registers (8 rows of the 1.5B's down projection: 1.39 ms as one pass of 8, 1.23 as
  // two of 4, on the 2-core Zen 4 dev machine).
  int64_t group;
  Portable8 portable8 = nullptr;  // portable path of an interleaved layout (8 weight rows)
  Pair pairs[kGroup] = {};        // wide passes for 1..group rows (interleaved, AVX-512 only)
  bool interleaved() const { return portable8 != nullptr; }
};

#if defined(__AVX2__)
enum class Kernel { q4_k, q6_k, q4_kx8, q6_kx8 };

template <Kernel K, int R>
constexpr Rows rows_kernel() {
  if constexpr (K == Kernel::q4_k) return q4_k_rows<R>;
  else if constexpr (K == Kernel::q6_k) return q6_k_rows<R>;
  else if constexpr (K == Kernel::q4_kx8) return q4_kx8_rows<R>;
  else return q6_kx8_rows<R>;
}

template <Kernel K, int R>
constexpr Pair pair_kernel() {
#if defined(SPINSERVE_WIDE)
  if constexpr (K == Kernel::q4_kx8) return q4_kx8_pair_rows<R>;
  else if constexpr (K == Kernel::q6_kx8) return q6_kx8_pair_rows<R>;
#endif
  return nullptr;
}

template <Kernel K, int... I>
constexpr Format make_format(int64_t bytes, Unpack unpack, Portable8 portable,
                             std::integer_sequence<int, I...>) {
  return Format{bytes, unpack, {rows_kernel<K, I + 1>()...}, sizeof...(I), portable,
                {pair_kernel<K, I + 1>()...}};
}

// A format whose vector kernels take 1..N rows per pass (N: its group).
template <Kernel K, int N>
constexpr Format make_format(int64_t bytes, Unpack unpack, Portable8 portable = nullptr) {
  return make_format<K>(bytes, unpack, portable, std::make_integer_sequence<int, N>());
}

constexpr Format kQ4KFormat = make_format<Kernel::q4_k, kGroup>(kQ4KBytes, unpack_q4_k);
constexpr Format kQ6KFormat = make_format<Kernel::q6_k, 4>(kQ6KBytes, unpack_q6_k);
constexpr Format kQ4KX8Format =
    make_format<Kernel::q4_kx8, kGroup>(kQ4KX8Bytes, nullptr, q4_kx8_portable);
constexpr Format kQ6KX8Format =
    make_format<Kernel::q6_kx8, kGroup>(kQ6KX8Bytes, nullptr, q6_kx8_portable);
#else
constexpr Format kQ4KFormat{kQ4KBytes, unpack_q4_k, {}, 1};
constexpr Format kQ6KFormat{kQ6KBytes, unpack_q6_k, {}, 1};
constexpr Format kQ4KX8Format{kQ4KX8Bytes, nullptr, {}, 1, q4_kx8_portable};
constexpr Format kQ6KX8Format{kQ6KX8Bytes, nullptr, {}, 1, q6_kx8_portable};
#endif

// Output columns [n_begin, n_end) of y = x W^T, every row.
void matmul_rows(const ActBlock* act, int64_t rows, int64_t nb, const uint8_t* blocks,
                 const Format& fmt, int64_t n_begin, int64_t n_end, int64_t n_out, float* y,
                 bool portable) {
#if defined(__AVX2__)
  if (!portable) {
    alignas(32) float acc[kGroup * kLanes];
    for (int64_t n = n_begin; n < n_end; ++n) {
      const uint8_t* row = blocks + n * nb * fmt.block_bytes;
      for (int64_t r = 0; r < rows; r += fmt.group) {
        const int64_t group = std::min(fmt.group, rows - r);
        std::memset(acc, 0, sizeof(acc));
        fmt.rows[group - 1](row, nb, act + r * nb, nb, acc);
        for (int64_t g = 0; g < group; ++g) {
          y[(r + g) * n_out + n] = reduce_lanes_avx2(_mm256_load_ps(acc + kLanes * g));
        }
      }
    }
    return;
  }
#endif
  WeightBlock w;
  alignas(32) float acc[kRowTile][kLanes];
  for (int64_t r0 = 0; r0 < rows; r0 += kRowTile) {
    const int64_t tile = std::min(kRowTile, rows - r0);
    for (int64_t n = n_begin; n < n_end; ++n) {
      const uint8_t* row = blocks + n * nb * fmt.block_bytes;
      std::memset(acc, 0, static_cast<size_t>(tile) * sizeof(acc[0]));
      for (int64_t b = 0; b < nb; ++b) {
        fmt.unpack(row + b * fmt.block_bytes, w);
        for (int64_t r = 0; r < tile; ++r) accumulate_portable(w, act[(r0 + r) * nb + b], acc[r]);
      }
      for (int64_t r = 0; r < tile; ++r) y[(r0 + r) * n_out + n] = sum_lanes(acc[r]);
    }
  }
}

// Output columns 8g .. 8g + 7 for the groups g in [g_begin, g_end) of an interleaved weight.
// Where the wide passes run, two groups at a time for passes of kWideMinRows rows or more.
void matmul_groups(const ActBlock* act, int64_t rows, int64_t nb, const uint8_t* chunks,
                   const Format& fmt, int64_t g_begin, int64_t g_end, int64_t n_out, float* y,
                   bool portable) {
  const bool vector = kVector && !portable;
  const int64_t pass = vector ? fmt.group : kRowTile;
  const bool wide = vector && fmt.pairs[0] != nullptr && rows >= kWideMinRows &&
                    spinserve_wide::mode() == 1;
  alignas(64) float acc[kRowTile * kX8];
  for (int64_t g = g_begin; g < g_end; ++g) {
    const uint8_t* group = chunks + g * nb * fmt.block_bytes;
    if (wide && g + 1 < g_end) {  // groups g and g + 1
      for (int64_t r = 0; r < rows; r += pass) {
        const int64_t count = std::min(pass, rows - r);
        std::memset(acc, 0, sizeof(acc));
        fmt.pairs[count - 1](group, group + nb * fmt.block_bytes, nb, act + r * nb, nb, acc);
        for (int64_t i = 0; i < count; ++i) {
          std::memcpy(y + (r + i) * n_out + kX8 * g, acc + 2 * kX8 * i, 2 * kX8 * sizeof(float));
        }
      }
      ++g;
      continue;
    }
    for (int64_t r = 0; r < rows; r += pass) {
      const int64_t count = std::min(pass, rows - r);
      std::memset(acc, 0, sizeof(acc));
      if (vector) {
        fmt.rows[count - 1](group, nb, act + r * nb, nb, acc);
      } else {
        for (int64_t b = 0; b < nb; ++b) {
          for (int64_t i = 0; i < count; ++i) {
            fmt.portable8(group + b * fmt.block_bytes, act[(r + i) * nb + b], acc + kX8 * i);
          }
        }
      }
      for (int64_t i = 0; i < count; ++i) {
        std::memcpy(y + (r + i) * n_out + kX8 * g, acc + kX8 * i, kX8 * sizeof(float));
      }
    }
  }
}

const Format& format_of(int64_t qtype) {
  switch (qtype) {
    case kQ4K: return kQ4KFormat;
    case kQ6K: return kQ6KFormat;
    case kQ4KX8: return kQ4KX8Format;
    case kQ6KX8: return kQ6KX8Format;
  }
  TORCH_CHECK(false, "unsupported block type ", qtype);
}

// y_i = x W_i^T for several weights of the same input width: x is rounded to int8 once, and
// one parallel loop runs over all their output columns (in a decode step the q, k and v
// projections are ~25 us each, so a separate fork/join and rounding for each shows).
std::vector<at::Tensor> block_matmul_many(const at::Tensor& x, at::TensorList blocks,
                                          at::IntArrayRef qtypes, at::IntArrayRef n_outs,
                                          bool portable) {
  const size_t count = blocks.size();
  const int64_t nb =
      spinserve_many::blocks_per_row(x, count, qtypes.size(), n_outs.size(), kQK);
  const int64_t rows = x.size(0);
  std::vector<at::Tensor> weights, outs;
  std::vector<const Format*> formats;
  std::vector<int64_t> first{0};  // first output column of each weight, in the joint range
  for (size_t i = 0; i < count; ++i) {
    const Format& fmt = format_of(qtypes[i]);
    formats.push_back(&fmt);
    const int64_t n_out = n_outs[i];
    // an interleaved weight has a row of chunks per 8 output columns
    const int64_t row_count = fmt.interleaved() ? n_out / kX8 : n_out;
    TORCH_CHECK(!fmt.interleaved() || n_out % kX8 == 0,
                "an interleaved weight's output width must be a multiple of 8, got ", n_out);
    TORCH_CHECK(blocks[i].scalar_type() == at::kByte && blocks[i].dim() == 2 &&
                    blocks[i].size(0) == row_count && blocks[i].size(1) == nb * fmt.block_bytes,
                "blocks have shape ", blocks[i].sizes(), ", expected [", row_count, ", ",
                nb * fmt.block_bytes, "]");
    weights.push_back(blocks[i].contiguous());
    outs.push_back(at::empty({rows, n_out}, x.options()));
    first.push_back(first.back() + n_out);
  }
  if (rows == 0 || first.back() == 0) return outs;
  const at::Tensor xc = x.contiguous();
  at::Tensor act_buf = at::empty({rows * nb * static_cast<int64_t>(sizeof(ActBlock))},
                                 weights[0].options());
  auto* act = reinterpret_cast<ActBlock*>(act_buf.data_ptr<uint8_t>());
  const float* xp = xc.data_ptr<float>();
  at::parallel_for(0, rows * nb, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) quantize_block(xp + i * kQK, act[i]);
  });
  at::parallel_for(0, first.back(), 16, [&](int64_t begin, int64_t end) {
    for (size_t i = 0; i < count; ++i) {
      const int64_t lo = std::max(begin, first[i]) - first[i];
      const int64_t hi = std::min(end, first[i + 1]) - first[i];
      if (lo >= hi) continue;
      if (formats[i]->interleaved()) {  // the groups whose first column is in [lo, hi)
        matmul_groups(act, rows, nb, weights[i].data_ptr<uint8_t>(), *formats[i],
                      (lo + kX8 - 1) / kX8, (hi + kX8 - 1) / kX8, n_outs[i],
                      outs[i].data_ptr<float>(), portable);
        continue;
      }
      matmul_rows(act, rows, nb, weights[i].data_ptr<uint8_t>(), *formats[i], lo, hi,
                  n_outs[i], outs[i].data_ptr<float>(), portable);
    }
  });
  return outs;
}

at::Tensor block_matmul(
    const at::Tensor& x, const at::Tensor& blocks, int64_t qtype, int64_t n_out, bool portable) {
  return block_matmul_many(x, {blocks}, {qtype}, {n_out}, portable)[0];
}

int64_t block_matmul_wide(int64_t mode) { return spinserve_wide::set_mode(static_cast<int>(mode)); }

}  // namespace

SPINSERVE_FRAGMENT(SPINSERVE_OPS, m) {
  // The wide passes (wide.h): set 0 or 1, or -1 to measure again; returns the mode before.
  m.def("block_matmul_wide(int mode) -> int", &block_matmul_wide);
  m.def("block_matmul(Tensor x, Tensor blocks, int qtype, int n_out, bool portable) -> Tensor");
  m.impl("block_matmul", c10::DispatchKey::CPU, &block_matmul);
  m.def("block_matmul_many(Tensor x, Tensor[] blocks, int[] qtypes, int[] n_outs, bool portable) "
        "-> Tensor[]");
  m.impl("block_matmul_many", c10::DispatchKey::CPU, &block_matmul_many);
}

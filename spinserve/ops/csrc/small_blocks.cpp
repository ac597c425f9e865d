// y = x W^T with W kept in GGUF's 32-weight blocks (Q8_0, Q5_0, Q4_0, Q4_1), any number of rows.
//
// The companion of block_matmul.cpp for the formats llama.cpp uses where rows are not whole
// 256-weight super-blocks (Qwen2.5-Coder-0.5B's 896-wide matrices are Q5_0 and Q8_0). Same
// scheme: activations rounded per row and per 32 columns to int8 (scale max|x| / 127, round
// half to even, with their sum: llama.cpp's Q8_0 activations), each weight block unpacked once
// per row tile and multiplied into every row with exact integer dot products (AVX2 maddubs;
// Q8_0's signed weights by the sign trick |w| * sign(x, w)), a block's integer total turned
// into one float and added to the row's sum in column order with uncontracted float ops. So a
// value depends only on its own row of x and of W: batch-invariant, and the same bits on the
// AVX2 and portable paths.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "half.h"
#include "lanes.h"
#include "namespace.h"
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

constexpr int64_t kQK = 32;
constexpr int64_t kRowTile = 32;
enum QType : int64_t { kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ8_0 = 8 };  // ggml's numbers

struct alignas(32) Act {
  int8_t q[kQK];
  float d;
  int32_t sum;
};

void quantize(const float* x, Act& a) {
  int32_t sums[kQK / 16];
  a.d = spinserve_quantize::quantize_int8(x, kQK, a.q, sums);
  a.sum = sums[0] + sums[1];
}

// A weight block as 32 values (unsigned, or signed for Q8_0) with the float part of its
// dot product with an activation block of integer dot `dot` and sum `sum`:
// Q8_0: d * dot; Q5_0 / Q4_0: d * (dot - offset * sum); Q4_1: d * dot + m * sum.
struct Weights {
  alignas(32) uint8_t q[kQK];
  float d, m;
  int32_t offset;
  bool is_signed, has_min;
};

constexpr int64_t block_bytes(int64_t qtype) {
  switch (qtype) {
    case kQ8_0: return 34;
    case kQ5_0: return 22;
    case kQ4_0: return 18;
    case kQ4_1: return 20;
    default: return 0;
  }
}

void unpack(int64_t qtype, const uint8_t* b, Weights& w) {
  w.d = half_to_float(b);
  w.m = 0.0f;
  w.offset = 0;
  w.is_signed = qtype == kQ8_0;
  w.has_min = qtype == kQ4_1;
  if (qtype == kQ8_0) {
    std::memcpy(w.q, b + 2, kQK);
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
  for (int j = 0; j < 16; ++j) {
    w.q[j] = (qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10);
    w.q[j + 16] = (qs[j] >> 4) | ((qh >> (j + 12)) & 0x10);
  }
  w.offset = qtype == kQ5_0 ? 16 : (qtype == kQ4_0 ? 8 : 0);
}

// A block's product with one row, added to the row's sums: 8 float lanes (lane l holds the
// exact integer dot of columns 4l..4l+3, the lanes of AVX2's maddubs + madd) and `extra`,
// the offset or min term (Q5_0/Q4_0: d * offset * sum of x, subtracted at the end; Q4_1:
// m * sum of x, added). The vector code does the same operations in the same order.
constexpr int kLanes = 8;

inline float extra_term(int64_t qtype, float d, float m, int32_t sum) {
  if (qtype == kQ4_1) return m * static_cast<float>(sum);
  const int32_t offset = qtype == kQ5_0 ? 16 : (qtype == kQ4_0 ? 8 : 0);
  return d * static_cast<float>(offset * sum);
}

inline float finish(int64_t qtype, const float* lanes, float extra) {
  const float total = sum_lanes(lanes);
  return qtype == kQ4_1 ? total + extra : total - extra;
}

inline void accumulate_portable(const Weights& w, const Act& a, float* lanes, float& extra) {
  int32_t v[kQK];
  for (int64_t i = 0; i < kQK; ++i) {
    v[i] = w.is_signed ? int32_t{static_cast<int8_t>(w.q[i])} : int32_t{w.q[i]};
  }
  for (int l = 0; l < kLanes; ++l) {
    int32_t dot = 0;
    for (int t = 0; t < 4; ++t) dot += v[4 * l + t] * int32_t{a.q[4 * l + t]};
    lanes[l] = lanes[l] + a.d * (w.d * static_cast<float>(dot));
  }
  extra = extra + a.d * (w.has_min ? w.m * static_cast<float>(a.sum)
                                   : w.d * static_cast<float>(w.offset * a.sum));
}

#if defined(__AVX2__)
// The block's 32 values in one register (Q8_0: as they are, signed), d and m from its header.
inline __m256i load_avx2(int64_t qtype, const uint8_t* b, float& d, float& m) {
  d = half_to_float(b);
  m = 0.0f;
  if (qtype == kQ8_0) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
  const uint8_t* qs = b + (qtype == kQ4_1 ? 4 : (qtype == kQ5_0 ? 6 : 2));
  if (qtype == kQ4_1) m = half_to_float(b + 2);
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i low = _mm256_set1_epi8(0x0F);
  __m256i q = _mm256_and_si256(
      _mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes), low);  // low nibbles: 0..15
  if (qtype == kQ5_0) {  // bit j of qh is bit 4 of value j
    uint32_t qh;
    std::memcpy(&qh, b + 2, 4);
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(static_cast<int>(qh)),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    q = _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
  }
  return q;
}

// One weight row (output column) x ROWS activation rows, the sums kept in registers across
// the blocks (its own function, so that they stay there): through memory each block's add
// waited on the last one's store, and one row of the 0.5B's 4864x896 Q5_0 product ran at
// ~12 GB/s (15 here). Each (column, row) adds its blocks in order, as the portable code does.
// (Two columns at a time, for two independent chains, measured slower: 0.40 against 0.20 ms.)
template <int64_t QTYPE, int ROWS>
__attribute__((noinline)) void rows_avx2(const Act* act, int64_t nb, const uint8_t* w,
                                         float* out) {
  constexpr int64_t bytes = block_bytes(QTYPE);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[ROWS];
  float extra[ROWS];
  for (int r = 0; r < ROWS; ++r) {
    acc[r] = _mm256_setzero_ps();
    extra[r] = 0.0f;
  }
  for (int64_t b = 0; b < nb; ++b) {
    float d, m;
    __m256i q = load_avx2(QTYPE, w + b * bytes, d, m);
    const __m256i sign = q;
    if (QTYPE == kQ8_0) q = _mm256_sign_epi8(q, q);  // |w|; x takes w's sign below
    const __m256 dv = _mm256_set1_ps(d);
    for (int r = 0; r < ROWS; ++r) {
      const Act& a = act[r * nb + b];
      __m256i x = _mm256_load_si256(reinterpret_cast<const __m256i*>(a.q));
      if (QTYPE == kQ8_0) x = _mm256_sign_epi8(x, sign);
      // |w| <= 128 and |x| <= 127: the pair sums (<= 32512) never saturate int16.
      const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);
      const __m256 part = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(dot));
      acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_set1_ps(a.d), part));
      extra[r] = extra[r] + a.d * extra_term(QTYPE, d, m, a.sum);
    }
  }
  alignas(32) float lanes[kLanes];
  for (int r = 0; r < ROWS; ++r) {
    _mm256_store_ps(lanes, acc[r]);
    out[r] = finish(QTYPE, lanes, extra[r]);
  }
}

constexpr int kTileRows = 4;  // rows per pass over a weight row

template <int64_t QTYPE>
void matmul_cols_avx2(const Act* act, int64_t rows, int64_t nb, const uint8_t* blocks,
                      int64_t n_begin, int64_t n_end, int64_t n_out, float* y) {
  using Rows = void (*)(const Act*, int64_t, const uint8_t*, float*);
  constexpr Rows kRows[kTileRows] = {rows_avx2<QTYPE, 1>, rows_avx2<QTYPE, 2>,
                                     rows_avx2<QTYPE, 3>, rows_avx2<QTYPE, 4>};
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
#endif

void matmul_cols(const Act* act, int64_t rows, int64_t nb, const uint8_t* blocks, int64_t qtype,
                 int64_t n_begin, int64_t n_end, int64_t n_out, float* y, bool portable) {
#if defined(__AVX2__)
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
          accumulate_portable(w, act[(r0 + r) * nb + b], lanes[r], extra[r]);
        }
      }
      for (int64_t r = 0; r < tile; ++r) y[(r0 + r) * n_out + n] = finish(qtype, lanes[r], extra[r]);
    }
  }
}

at::Tensor small_block_matmul(const at::Tensor& x, const at::Tensor& blocks, int64_t qtype,
                              int64_t n_out, bool portable) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be 2-D float32");
  TORCH_CHECK(blocks.scalar_type() == at::kByte && blocks.dim() == 2, "blocks must be 2-D uint8");
  const int64_t bytes = block_bytes(qtype);
  TORCH_CHECK(bytes > 0, "unsupported block type ", qtype);
  const int64_t rows = x.size(0), k = x.size(1);
  TORCH_CHECK(k % kQK == 0, "in_features must be a multiple of 32, got ", k);
  const int64_t nb = k / kQK;
  TORCH_CHECK(blocks.size(0) == n_out && blocks.size(1) == nb * bytes, "blocks have shape [",
              blocks.size(0), ", ", blocks.size(1), "], expected [", n_out, ", ", nb * bytes, "]");
  const at::Tensor xc = x.contiguous(), bc = blocks.contiguous();
  at::Tensor y = at::empty({rows, n_out}, x.options());
  if (rows == 0 || n_out == 0) return y;
  at::Tensor buf = at::empty({rows * nb * static_cast<int64_t>(sizeof(Act))}, blocks.options());
  auto* act = reinterpret_cast<Act*>(buf.data_ptr<uint8_t>());
  const float* xp = xc.data_ptr<float>();
  at::parallel_for(0, rows * nb, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) quantize(xp + i * kQK, act[i]);
  });
  const uint8_t* bp = bc.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, n_out, 16, [&](int64_t begin, int64_t end) {
    matmul_cols(act, rows, nb, bp, qtype, begin, end, n_out, yp, portable);
  });
  return y;
}

}  // namespace

SPINSERVE_FRAGMENT(SPINSERVE_OPS, m) {
  m.def("small_block_matmul(Tensor x, Tensor blocks, int qtype, int n_out, bool portable) -> "
        "Tensor");
  m.impl("small_block_matmul", c10::DispatchKey::CPU, &small_block_matmul);
}

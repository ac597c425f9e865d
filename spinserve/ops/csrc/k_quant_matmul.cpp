// y = x W^T for k-quant weights (Q4_K, Q6_K, and their interleaved x8 forms), any number of
// rows: the formats' kernels (k_quants.h, k_quants_x8.h) in one table, and the loop that splits
// a call's output columns between the threads. k_quants.h says why and how the numerics are
// batch-invariant.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "k_quants_x8.h"
#include "kernels.h"
#include "many.h"

#include <utility>
#include <vector>

namespace {

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
                    SPINSERVE_OPS::wide_mode() == 1;
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

}  // namespace

namespace SPINSERVE_OPS {

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

}  // namespace SPINSERVE_OPS

// y = x W^T for the 32-weight blocks (Q8_0, Q5_0, Q4_0, Q4_1, and their interleaved x8
// forms), any number of rows: which kernel runs for a format and a code path, and the loop that
// splits a call's output columns between the threads. small_blocks.h says why and how the
// numerics are batch-invariant.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "kernels.h"
#include "many.h"
#include "small_blocks_x8.h"

#include <vector>

namespace {

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

}  // namespace

namespace SPINSERVE_OPS {

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

}  // namespace SPINSERVE_OPS

// The argument checks of block_matmul_many and small_block_matmul_many (k_quant_matmul.cpp, small_matmul.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace spinserve_many {

// x is [rows, in] float32 with in a multiple of `block` (weights per block), and there are as
// many block types and output widths as weights; returns the blocks per row of x.
inline int64_t blocks_per_row(const at::Tensor& x, size_t weights, size_t qtypes, size_t n_outs,
                              int64_t block) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be 2-D float32");
  TORCH_CHECK(weights > 0 && qtypes == weights && n_outs == weights,
              "expected as many block types and output widths as weights");
  TORCH_CHECK(x.size(1) % block == 0, "in_features must be a multiple of ", block, ", got ",
              x.size(1));
  return x.size(1) / block;
}

}  // namespace spinserve_many

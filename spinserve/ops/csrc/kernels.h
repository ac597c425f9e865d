// The parts of our one kernel library that call each other, as plain C++ functions: the layer
// stack (decoder_layers.cpp) calls the block matmuls and the attention directly, and
// library.cpp registers them all as torch ops. Everything lives in the namespace named by the
// build (namespace.h), so a test build loaded beside this machine's shares no symbol with it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "namespace.h"

namespace SPINSERVE_OPS {

// y_i = x W_i^T for k-quant weights (Q4_K, Q6_K and their x8 forms) of one input width:
// x rounded once, one parallel loop over all their output columns (k_quant_matmul.cpp).
std::vector<at::Tensor> block_matmul_many(const at::Tensor& x, at::TensorList blocks,
                                          at::IntArrayRef qtypes, at::IntArrayRef n_outs,
                                          bool portable);

// The same for the 32-weight blocks (Q8_0, Q5_0, Q4_0, Q4_1 and their x8 forms;
// small_matmul.cpp).
std::vector<at::Tensor> small_block_matmul_many(const at::Tensor& x, at::TensorList blocks,
                                                at::IntArrayRef qtypes, at::IntArrayRef n_outs,
                                                bool portable);

// Each query row against exactly its keys (row_attention.cpp).
at::Tensor row_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                         const at::Tensor& slots, const at::Tensor& offsets, double scale);

// All the decoder layers of a llama/qwen2-style model in one call (decoder_layers.cpp).
at::Tensor decoder_layers(const at::Tensor& hidden, const at::Tensor& cos, const at::Tensor& sin,
                          at::TensorList k_caches, at::TensorList v_caches,
                          const at::Tensor& slot_mapping, const at::Tensor& slots,
                          const at::Tensor& offsets, at::TensorList weights,
                          at::IntArrayRef kinds, int64_t heads, int64_t kv_heads, double eps,
                          double scale);

// Whether the interleaved kernels' wide passes run (wide.h): 1 or 0, decided on first use.
int wide_mode();
// Set it (0 or 1; -1: measure again on the next use); returns the mode before.
int set_wide_mode(int mode);

}  // namespace SPINSERVE_OPS

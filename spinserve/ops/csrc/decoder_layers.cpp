// All the decoder layers of a llama/qwen2-style model in one call.
//
// A decode step of Qwen2.5-Coder-1.5B is 28 layers of 7 matrix products and about 25 small
// vector operations (norms, rotary, cache writes, residual adds, the gated activation). Each
// small operation costs a few microseconds when Python hands it to torch and almost nothing
// here, so this file runs a whole stack of layers per call, for every row of the step:
//
//   h = rms_norm(x) ; q, k, v = h Wq^T + bq, ... ; rotary(q, k) ; k, v -> cache slots
//   x = x + attention(q, cache) Wo^T
//   h = rms_norm(x) ; x = x + (silu(h Wg^T) * (h Wu^T)) Wd^T
//
// The matrix products and the attention are the library's other kernels (block_matmul_many or
// small_block_matmul_many, and row_attention; kernels.h), called directly, or torch's int4/int8
// kernels for weights kept in their forms. The vector operations here compute each row on its
// own, in a fixed order (8 float lanes summed in a fixed tree), so a row's result does not
// depend on the rows beside it (batch invariance: docs/design.md).
//
// Weights per layer, in this order (an empty tensor where a part is absent):
//   input norm, post-attention norm, then for q, k, v, o, gate, up, down: (a, b) and for q, k, v
//   a bias. The kind of each linear: a GGUF block type (>= 0) with a = its blocks; kInt4 with
//   a = packed weight, b = scales and zeros; kInt8 with a = int8 weight, b = row scales;
//   kDense with a = the float32 weight; kDenseRowwise with a = a bfloat16 or float16 weight.

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_weight_int4pack_mm_for_cpu.h>
#include <ATen/ops/_weight_int8pack_mm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/linear.h>
#include <c10/util/Half.h>

#include "formats.h"
#include "kernels.h"
#include "lanes.h"
#include "vec8.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

namespace {

using SPINSERVE_OPS::block_matmul_many;
using SPINSERVE_OPS::small_block_matmul_many;
using spinserve_lanes::sum_lanes;

constexpr int kLanes = 8;
constexpr int64_t kInt4 = -1, kInt8 = -2, kDense = -3, kDenseRowwise = -4;
constexpr int64_t kInt4Group = 32;
constexpr int kLinears = 7;  // q, k, v, o, gate, up, down
constexpr int kPerLayer = 2 + 2 * kLinears + 3;
enum Linear { kQ, kK, kV, kO, kGate, kUp, kDown };

// Turns oneDNN off for a scope, as `spinserve.ops.quant.rowwise_linear` does.
struct MkldnnOff {
  bool was = at::globalContext().userEnabledMkldnn();
  MkldnnOff() { at::globalContext().setUserEnabledMkldnn(false); }
  ~MkldnnOff() { at::globalContext().setUserEnabledMkldnn(was); }
};

// A block format's weight (formats.h) has a row of blocks per output feature, or an
// interleaved one a row of chunks per 8.
bool is_k_quant(int64_t kind) { return spinserve_formats::k_quant(kind); }
int64_t out_features(const at::Tensor& blocks, int64_t kind) {
  return spinserve_formats::interleaved(kind) ? 8 * blocks.size(0) : blocks.size(0);
}

// y = x W^T for one linear of the layer (a, b: its tensors, kind: its form).
at::Tensor linear(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b, int64_t kind) {
  if (kind == kInt4) {
    return at::_weight_int4pack_mm_for_cpu(x.to(at::kBFloat16), a, kInt4Group, b).to(at::kFloat);
  }
  if (kind == kInt8) return at::_weight_int8pack_mm(x.to(at::kBFloat16), a, b).to(at::kFloat);
  if (kind == kDense) return at::linear(x, a);
  if (kind == kDenseRowwise) {
    // torch's own matrix-vector kernel, row by row (oneDNN's blocking depends on the row count)
    MkldnnOff off;
    return at::linear(x.to(a.scalar_type()), a).to(at::kFloat);
  }
  // GGUF blocks: the k-quant super-blocks or the 32-weight blocks
  const auto& many = is_k_quant(kind) ? block_matmul_many : small_block_matmul_many;
  return many(x, {a}, {kind}, {out_features(a, kind)}, false)[0];
}

// The linears `which` of one layer on the same input: one call of block_matmul_many (one
// activation rounding, one parallel loop) when all are k-quant blocks, of
// small_block_matmul_many when all are 32-weight blocks, else one call each.
std::vector<at::Tensor> linears(const at::Tensor& x, const at::Tensor* w, const int64_t* kind,
                                std::initializer_list<int> which) {
  bool all_k_quant = true, all_small = true;
  std::vector<at::Tensor> blocks;
  std::vector<int64_t> qtypes, n_outs;
  for (int i : which) {
    all_k_quant = all_k_quant && is_k_quant(kind[i]);
    all_small = all_small && kind[i] >= 0 && !is_k_quant(kind[i]);
    if (kind[i] >= 0) {
      blocks.push_back(w[2 + 2 * i]);
      qtypes.push_back(kind[i]);
      n_outs.push_back(out_features(w[2 + 2 * i], kind[i]));
    }
  }
  if (all_k_quant) return block_matmul_many(x, blocks, qtypes, n_outs, false);
  if (all_small) return small_block_matmul_many(x, blocks, qtypes, n_outs, false);
  std::vector<at::Tensor> out;
  for (int j : which) out.push_back(linear(x, w[2 + 2 * j], w[3 + 2 * j], kind[j]));
  return out;
}

// Values from which the vector operations below split between the threads (a fork and join
// costs ~0.6 us; 4,096 values of a norm or of SiLU about 1-2 us on one thread).
constexpr int64_t kParallelValues = 4096;

// out[r] = w * (x[r] / sqrt(mean(x[r]^2) + eps))
void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out) {
  const int64_t grain = std::max<int64_t>(1, kParallelValues / dim);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * dim;
      float lanes[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t i = 0;
      for (; i + kLanes <= dim; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) lanes[l] = lanes[l] + xr[i + l] * xr[i + l];
      }
      for (int l = 0; i < dim; ++i, ++l) lanes[l] = lanes[l] + xr[i] * xr[i];
      const float inv = 1.0f / std::sqrt(sum_lanes(lanes) / static_cast<float>(dim) + eps);
      float* o = out + r * dim;
      for (i = 0; i < dim; ++i) o[i] = w[i] * (xr[i] * inv);
    }
  });
}

// Rotary embedding in the "rotate half" layout, in place: x [rows, heads, dim].
void rotate(float* x, const float* cos, const float* sin, int64_t rows, int64_t heads,
            int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const float* c = cos + r * dim;
    const float* s = sin + r * dim;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (r * heads + h) * dim;
      for (int64_t i = 0; i < half; ++i) {
        const float lo = v[i], hi = v[i + half];
        v[i] = lo * c[i] + -hi * s[i];
        v[i + half] = hi * c[i + half] + lo * s[i + half];
      }
    }
  }
}

void add_bias(at::Tensor& y, const at::Tensor& bias) {
  if (bias.numel() == 0) return;
  float* yp = y.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const int64_t rows = y.size(0), n = y.size(1);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < n; ++i) yp[r * n + i] = yp[r * n + i] + bp[i];
  }
}

// g[i] = silu(g[i]) * u[i], on 16-float vectors (the polynomial exp of vec8.h: one row of the
// 1.5B's 8960 values took ~60 us with libm's scalar expf; ~30 vector operations a vector
// here, so both threads from 8,192 values on: 8 rows of SmolLM2's 1,536 ran on one thread
// at 1,024 vectors, 5 us a layer), the last partial vector through zero-padded copies.
void silu_times(float* g, const float* u, int64_t n) {
  using namespace spinserve_vec8;
  constexpr int64_t kWide = 16;
  const int64_t grain = 2 * kParallelValues / kWide;
  at::parallel_for(0, (n + kWide - 1) / kWide, grain, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      const int64_t i = v * kWide, count = std::min(kWide, n - i);
      v16f gv, uv;
      if (count == kWide) {
        std::memcpy(&gv, g + i, sizeof(gv));
        std::memcpy(&uv, u + i, sizeof(uv));
      } else {
        gv = uv = fill<v16f>(0.0f);
        std::memcpy(&gv, g + i, count * sizeof(float));
        std::memcpy(&uv, u + i, count * sizeof(float));
      }
      const v16f out = silu_of<v16f, v16i>(gv) * uv;
      if (count == kWide) {
        std::memcpy(g + i, &out, sizeof(out));
      } else {
        std::memcpy(g + i, &out, count * sizeof(float));
      }
    }
  });
}

void add_into(float* x, const at::Tensor& y) {
  const float* yp = y.data_ptr<float>();
  for (int64_t i = 0, n = y.numel(); i < n; ++i) x[i] = x[i] + yp[i];
}

// Each row's k and v into its cache slot; a float16 cache takes them rounded to nearest.
template <typename T>
void write_cache(const at::Tensor& k, const at::Tensor& v, T* kc, T* vc, const int64_t* slot,
                 int64_t rows, int64_t kv_width) {
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < kv_width; ++i) {
      kc[slot[r] * kv_width + i] = static_cast<T>(kp[r * kv_width + i]);
      vc[slot[r] * kv_width + i] = static_cast<T>(vp[r * kv_width + i]);
    }
  }
}

void check_float(const at::Tensor& t, int64_t numel, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel, what,
              " must be a contiguous float32 tensor of ", numel, " values");
}

}  // namespace

namespace SPINSERVE_OPS {

at::Tensor decoder_layers(const at::Tensor& hidden, const at::Tensor& cos, const at::Tensor& sin,
                          at::TensorList k_caches, at::TensorList v_caches,
                          const at::Tensor& slot_mapping, const at::Tensor& slots,
                          const at::Tensor& offsets, at::TensorList weights,
                          at::IntArrayRef kinds, int64_t heads, int64_t kv_heads, double eps,
                          double scale) {
  TORCH_CHECK(hidden.dim() == 2 && hidden.scalar_type() == at::kFloat,
              "hidden must be [rows, hidden] float32");
  const int64_t layers = static_cast<int64_t>(k_caches.size());
  TORCH_CHECK(static_cast<int64_t>(v_caches.size()) == layers &&
                  static_cast<int64_t>(weights.size()) == layers * kPerLayer &&
                  static_cast<int64_t>(kinds.size()) == layers * kLinears,
              "expected ", kPerLayer, " weights and ", kLinears, " kinds per layer");
  const int64_t rows = hidden.size(0), dim = hidden.size(1);
  TORCH_CHECK(layers > 0 && heads % kv_heads == 0 && kv_heads > 0, "bad head counts");
  const int64_t head_dim = k_caches[0].size(2);
  TORCH_CHECK(head_dim % 2 == 0 && k_caches[0].size(1) == kv_heads, "bad cache shape");
  check_float(cos, rows * head_dim, "cos");
  check_float(sin, rows * head_dim, "sin");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.numel() == rows,
              "slot_mapping must be int64 [rows]");
  const at::Tensor slot_c = slot_mapping.contiguous();
  const int64_t* slot = slot_c.data_ptr<int64_t>();
  const int64_t num_slots = k_caches[0].size(0);
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(slot[r] >= 0 && slot[r] < num_slots, "slot ", slot[r], " outside the cache");
  }
  const int64_t kv_width = kv_heads * head_dim;
  at::Tensor x = hidden.contiguous().clone();
  at::Tensor h = at::empty_like(x);
  float* xp = x.data_ptr<float>();
  float* hp = h.data_ptr<float>();
  const float feps = static_cast<float>(eps);
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor* w = weights.data() + l * kPerLayer;
    const int64_t* kind = kinds.data() + l * kLinears;
    auto lin = [&](const at::Tensor& in, Linear which) {
      return linear(in, w[2 + 2 * which], w[3 + 2 * which], kind[which]);
    };
    const at::Tensor& k_cache = k_caches[l];
    const at::Tensor& v_cache = v_caches[l];
    const auto cache_type = k_cache.scalar_type();
    TORCH_CHECK((cache_type == at::kFloat || cache_type == at::kHalf) &&
                    v_cache.scalar_type() == cache_type && k_cache.is_contiguous() &&
                    v_cache.sizes() == k_cache.sizes() && v_cache.is_contiguous() &&
                    k_cache.size(0) == num_slots && k_cache.size(1) * k_cache.size(2) == kv_width,
                "layer ", l, ": caches must be contiguous float32 or float16 [", num_slots, ", ",
                kv_heads, ", ", head_dim, "]");
    check_float(w[0], dim, "input norm weight");
    check_float(w[1], dim, "post-attention norm weight");

    rms_norm(xp, w[0].data_ptr<float>(), rows, dim, feps, hp);
    std::vector<at::Tensor> qkv = linears(h, w, kind, {kQ, kK, kV});
    at::Tensor &q = qkv[0], &k = qkv[1], &v = qkv[2];
    TORCH_CHECK(q.size(1) == heads * head_dim && k.size(1) == kv_width && v.size(1) == kv_width,
                "layer ", l, ": projections do not match the head shapes");
    add_bias(q, w[2 + 2 * kLinears]);
    add_bias(k, w[3 + 2 * kLinears]);
    add_bias(v, w[4 + 2 * kLinears]);
    rotate(q.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), rows, heads,
           head_dim);
    rotate(k.data_ptr<float>(), cos.data_ptr<float>(), sin.data_ptr<float>(), rows, kv_heads,
           head_dim);
    if (cache_type == at::kHalf) {
      write_cache(k, v, k_cache.data_ptr<at::Half>(), v_cache.data_ptr<at::Half>(), slot, rows,
                  kv_width);
    } else {
      write_cache(k, v, k_cache.data_ptr<float>(), v_cache.data_ptr<float>(), slot, rows,
                  kv_width);
    }
    const at::Tensor attended =
        row_attention(q.view({rows, heads, head_dim}), k_cache, v_cache, slots, offsets, scale);
    add_into(xp, lin(attended.view({rows, heads * head_dim}), kO));

    rms_norm(xp, w[1].data_ptr<float>(), rows, dim, feps, hp);
    std::vector<at::Tensor> gate_up = linears(h, w, kind, {kGate, kUp});
    const at::Tensor &gate = gate_up[0], &up = gate_up[1];
    float* gp = gate.data_ptr<float>();
    const float* up_p = up.data_ptr<float>();
    silu_times(gp, up_p, gate.numel());
    add_into(xp, lin(gate, kDown));
  }
  return x;
}

}  // namespace SPINSERVE_OPS

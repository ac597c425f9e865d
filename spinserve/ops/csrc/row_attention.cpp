// Attention of each query row against exactly the keys it sees, all rows of a step in one call.
//
// out[r, h] = softmax(scale * q[r, h] . K_r^T) V_r, where K_r, V_r are the cache rows listed in
// slots[offsets[r] : offsets[r + 1]] (head h's kv head: h / (heads / kv_heads)). Each (row,
// head) is computed alone, in a fixed order: the dot products in 8 float lanes summed in a
// fixed tree, the softmax over the keys in order, the weighted sum of values in key order.
// So a row's result does not depend on the rows beside it or on the thread split (batch
// invariance: docs/design.md), and one call replaces a Python loop of small torch ops per row
// per layer.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "namespace.h"

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int kLanes = 8;

float dot(const float* a, const float* b, int64_t n) {
  float lanes[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] = lanes[l] + a[i + l] * b[i + l];
  }
  for (int l = 0; i < n; ++i, ++l) lanes[l] = lanes[l] + a[i] * b[i];
  return ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) +
         ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
}

at::Tensor row_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                         const at::Tensor& slots, const at::Tensor& offsets, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat, "q must be [rows, heads, dim] f32");
  TORCH_CHECK(k_cache.dim() == 3 && k_cache.scalar_type() == at::kFloat &&
                  v_cache.sizes() == k_cache.sizes() && v_cache.scalar_type() == at::kFloat,
              "k_cache and v_cache must be [slots, kv_heads, dim] f32");
  TORCH_CHECK(slots.scalar_type() == at::kLong && offsets.scalar_type() == at::kLong,
              "slots and offsets must be int64");
  const int64_t rows = q.size(0), heads = q.size(1), dim = q.size(2);
  const int64_t kv_heads = k_cache.size(1), num_slots = k_cache.size(0);
  TORCH_CHECK(k_cache.size(2) == dim && heads % kv_heads == 0, "head shapes do not match");
  TORCH_CHECK(offsets.numel() == rows + 1, "offsets must have rows + 1 entries");
  const at::Tensor qc = q.contiguous(), kc = k_cache.contiguous(), vc = v_cache.contiguous();
  const at::Tensor sc = slots.contiguous(), oc = offsets.contiguous();
  const int64_t* slot = sc.data_ptr<int64_t>();
  const int64_t* off = oc.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[rows] == slots.numel(), "offsets do not cover the slots");
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(off[r + 1] > off[r], "every row needs at least one key");
  }
  for (int64_t i = 0; i < slots.numel(); ++i) {
    TORCH_CHECK(slot[i] >= 0 && slot[i] < num_slots, "slot ", slot[i], " outside the cache");
  }
  at::Tensor out = at::empty({rows, heads, dim}, q.options());
  const float* qp = qc.data_ptr<float>();
  const float* kp = kc.data_ptr<float>();
  const float* vp = vc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t group = heads / kv_heads;
  const float s = static_cast<float>(scale);
  at::parallel_for(0, rows * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / heads, h = i % heads, kvh = h / group;
      const float* qv = qp + i * dim;
      const int64_t first = off[r], n = off[r + 1] - off[r];
      p.resize(n);
      float top = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        p[j] = dot(qv, kp + (slot[first + j] * kv_heads + kvh) * dim, dim) * s;
        top = std::fmax(top, p[j]);
      }
      float total = 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        p[j] = std::exp(p[j] - top);
        total = total + p[j];
      }
      float* o = op + i * dim;
      for (int64_t d = 0; d < dim; ++d) o[d] = 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        const float* vv = vp + (slot[first + j] * kv_heads + kvh) * dim;
        const float w = p[j];
        for (int64_t d = 0; d < dim; ++d) o[d] = o[d] + w * vv[d];
      }
      for (int64_t d = 0; d < dim; ++d) o[d] = o[d] / total;
    }
  });
  return out;
}

}  // namespace

SPINSERVE_FRAGMENT(SPINSERVE_OPS, m) {
  m.def("row_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor offsets, "
        "float scale) -> Tensor");
  m.impl("row_attention", c10::DispatchKey::CPU, &row_attention);
}

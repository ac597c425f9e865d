// Attention of each query row against exactly the keys it sees, all rows of a step in one call.
//
// out[r, h] = softmax(scale * q[r, h] . K_r^T) V_r, where K_r, V_r are the cache rows listed in
// slots[offsets[r] : offsets[r + 1]] (head h's kv head: h / (heads / kv_heads)). Each (row,
// head) is computed alone, in a fixed order: the dot products in 8 float lanes summed in a
// fixed tree, the softmax over the keys in order, the weighted sum of values in key order.
// So a row's result does not depend on the rows beside it or on the thread split (batch
// invariance: docs/design.md), and one call replaces a Python loop of small torch ops per row
// per layer.
//
// The work is split by (row, kv head): the query heads that share a kv head read each key and
// value once. The arithmetic is written on 8-float vectors (GCC vector extensions): AVX where
// the CPU has it, two SSE halves otherwise, the same operations lane by lane, so both builds
// give the same bits; exp is a fixed polynomial (Cephes' expf) on those vectors.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "lanes.h"
#include "namespace.h"
#include "vec8.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using namespace spinserve_vec8;
using spinserve_lanes::sum_lanes;

constexpr int64_t kMaxGroup = 64;
float dot(const float* a, const float* b, int64_t n) {
  v8f acc = splat(0.0f);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) acc = acc + load(a + i) * load(b + i);
  for (int l = 0; i < n; ++i, ++l) acc[l] = acc[l] + a[i] * b[i];
  return sum_lanes(acc);
}

// p[j] = exp(p[j] - top) for j < n, in place; returns their sum (in key order).
float softmax_numerators(float* p, int64_t n, float top) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) store(p + j, exp_nonpositive(load(p + j) - splat(top)));
  if (j < n) {
    float tail[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(tail, p + j, (n - j) * sizeof(float));
    store(tail, exp_nonpositive(load(tail) - splat(top)));
    std::memcpy(p + j, tail, (n - j) * sizeof(float));
  }
  float total = 0.0f;
  for (j = 0; j < n; ++j) total = total + p[j];
  return total;
}

// o += w * v over dim values.
void add_scaled(float* o, const float* v, float w, int64_t dim) {
  int64_t d = 0;
  for (; d + kLanes <= dim; d += kLanes) store(o + d, load(o + d) + splat(w) * load(v + d));
  for (; d < dim; ++d) o[d] = o[d] + w * v[d];
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
  TORCH_CHECK(group <= kMaxGroup, "at most ", kMaxGroup, " query heads per kv head");
  const float s = static_cast<float>(scale);
  at::parallel_for(0, rows * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / kv_heads, kvh = i % kv_heads;
      const int64_t first = off[r], n = off[r + 1] - off[r];
      const int64_t h0 = kvh * group;  // this kv head's first query head
      scores.resize(group * n);
      for (int64_t j = 0; j < n; ++j) {
        const float* key = kp + (slot[first + j] * kv_heads + kvh) * dim;
        for (int64_t g = 0; g < group; ++g) {
          scores[g * n + j] = dot(qp + (r * heads + h0 + g) * dim, key, dim) * s;
        }
      }
      float total[kMaxGroup];
      for (int64_t g = 0; g < group; ++g) {
        float* p = scores.data() + g * n;
        float top = -INFINITY;
        for (int64_t j = 0; j < n; ++j) top = std::fmax(top, p[j]);
        total[g] = softmax_numerators(p, n, top);
      }
      float* o = op + (r * heads + h0) * dim;
      std::fill(o, o + group * dim, 0.0f);
      for (int64_t j = 0; j < n; ++j) {
        const float* value = vp + (slot[first + j] * kv_heads + kvh) * dim;
        for (int64_t g = 0; g < group; ++g) add_scaled(o + g * dim, value, scores[g * n + j], dim);
      }
      for (int64_t g = 0; g < group * dim; ++g) o[g] = o[g] / total[g / dim];
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

// Attention of each query row against exactly the keys it sees, all rows of a step in one call.
//
// out[r, h] = softmax(scale * q[r, h] . K_r^T) V_r, where K_r, V_r are the cache rows listed in
// slots[offsets[r] : offsets[r + 1]] (head h's kv head: h / (heads / kv_heads)). Each (row,
// head) is computed alone, in a fixed order: the dot products as fused multiply-adds in 16
// float lanes (8 where the head size is not a multiple of 16) folded to 8 and summed in a
// fixed tree, the softmax's sum in 8 lanes (key j in lane j % 8) summed by the same tree, the
// weighted sum of values in key order (a fused multiply-add per value), each output divided
// by the softmax's sum. So a row's result does not depend on the rows beside it or on the
// thread split (batch invariance: docs/design.md), and one call replaces a Python loop of
// small torch ops per row per layer.
//
// The work is split by (run of rows, kv head): the rows of one request's chunk see nested
// key lists (each row the previous row's keys and one more), so they and the query heads that
// share a kv head are computed together, and each key and value is read once for all of them
// (before, each row and each head re-read them). A (row, head)'s arithmetic is the same in any
// run: each score alone, the values summed in key order. The arithmetic is written on 8- and
// 16-float vectors (GCC vector extensions): AVX-512 or AVX where the CPU has them, narrower
// pieces otherwise, the same operations lane by lane (a fused multiply-add rounds once in the
// instruction and in std::fma alike), so every build gives the same bits; exp is a fixed
// polynomial (Cephes' expf) on those vectors.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>

#include "kernels.h"
#include "lanes.h"
#include "vec8.h"

#include <algorithm>
#include <type_traits>
#if defined(__F16C__) || defined(__FMA__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using namespace spinserve_vec8;
using spinserve_lanes::sum_lanes;

// The cache holds float32 or float16 keys and values (`--kv-cache-dtype`); a float16 value
// is read as the float it is exactly (every half is a float), so a half cache gives the bits
// of a float cache holding the same, rounded, values, in every build.
inline float as_float(float x) { return x; }
inline float as_float(at::Half x) { return static_cast<float>(x); }

// Products are summed with fused multiply-adds (one rounding each, as std::fma: the same bits
// from the instruction and from the portable fallback), in W lanes: 16 where the head size is
// a multiple of 16, else 8.

inline v8f halves_lo(v16f a) { return __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7); }
inline v8f halves_hi(v16f a) {
  return __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
}
inline v16f join(v8f lo, v8f hi) {
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

// a * b + c, rounded once, lane by lane.
inline v8f fmadd(v8f a, v8f b, v8f c) {
#if defined(__FMA__)
  return reinterpret_cast<v8f>(_mm256_fmadd_ps(reinterpret_cast<__m256>(a),
                                               reinterpret_cast<__m256>(b),
                                               reinterpret_cast<__m256>(c)));
#else
  v8f r;
  for (int l = 0; l < kLanes; ++l) r[l] = std::fma(a[l], b[l], c[l]);
  return r;
#endif
}
inline v16f fmadd(v16f a, v16f b, v16f c) {
#if defined(__AVX512F__)
  return reinterpret_cast<v16f>(_mm512_fmadd_ps(reinterpret_cast<__m512>(a),
                                                reinterpret_cast<__m512>(b),
                                                reinterpret_cast<__m512>(c)));
#else
  return join(fmadd(halves_lo(a), halves_lo(b), halves_lo(c)),
              fmadd(halves_hi(a), halves_hi(b), halves_hi(c)));
#endif
}

// W cache values from p, as floats.
inline v8f load_values8(const float* p) { return load(p); }
inline v8f load_values8(const at::Half* p) {
#if defined(__F16C__)
  const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return reinterpret_cast<v8f>(f);
#else
  v8f v;
  for (int l = 0; l < kLanes; ++l) v[l] = static_cast<float>(p[l]);
  return v;
#endif
}

template <typename Vec, typename T>
inline Vec load_values(const T* p) {
  if constexpr (width<Vec>() == kLanes) {
    return load_values8(p);
  } else if constexpr (std::is_same_v<T, float>) {
    Vec v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  } else {
#if defined(__AVX512F__)
    return reinterpret_cast<v16f>(
        _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#else
    return join(load_values8(p), load_values8(p + kLanes));
#endif
  }
}

// W lanes to 8: lane l plus lane l + 8.
inline v8f fold(v8f a) { return a; }
inline v8f fold(v16f a) { return halves_lo(a) + halves_hi(a); }

// a . b over n values: fused products in W lanes (lane l: positions l, l + W, ...), folded
// to 8, summed by sum_lanes' tree.
template <typename Vec, typename T>
float dot(const float* a, const T* b, int64_t n) {
  constexpr int W = width<Vec>();
  Vec acc = fill<Vec>(0.0f);
  int64_t i = 0;
  for (; i + W <= n; i += W) acc = fmadd(load_values<Vec>(a + i), load_values<Vec>(b + i), acc);
  for (int l = 0; i < n; ++i, ++l) acc[l] = std::fma(a[i], as_float(b[i]), acc[l]);
  return sum_lanes(fold(acc));
}

// Every cache line of `bytes` bytes at p, asked for ahead (never faults).
template <typename T>
inline void prefetch_row(const T* p, int64_t bytes) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i);
}

// The largest of p[0, n) (exact in any order: a maximum does not round).
float largest(const float* p, int64_t n) {
  v8f top = splat(-INFINITY);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const v8f x = load(p + j);
    top = x > top ? x : top;
  }
  float best = -INFINITY;
  for (int l = 0; l < kLanes; ++l) best = top[l] > best ? top[l] : best;
  for (; j < n; ++j) best = p[j] > best ? p[j] : best;
  return best;
}

// p[j] = exp(p[j] - top) for j < n, in place; returns their sum: 8 lanes, key j in lane
// j % 8, each lane summed in key order, the lanes by sum_lanes' tree.
float softmax_numerators(float* p, int64_t n, float top) {
  v8f sum = splat(0.0f);
  int64_t j = 0;
  // 16 keys per exp (half the instructions of two 8-key ones; the same bits), added to the
  // sum as keys j..j+7, then j+8..j+15
  for (; j + 2 * kLanes <= n; j += 2 * kLanes) {
    v16f x;
    std::memcpy(&x, p + j, sizeof(x));
    const v16f e = exp_nonpositive_of<v16f, v16i>(x - fill<v16f>(top));
    std::memcpy(p + j, &e, sizeof(e));
    sum = sum + halves_lo(e);
    sum = sum + halves_hi(e);
  }
  for (; j + kLanes <= n; j += kLanes) {
    const v8f e = exp_nonpositive(load(p + j) - splat(top));
    store(p + j, e);
    sum = sum + e;
  }
  if (j < n) {
    float tail[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(tail, p + j, (n - j) * sizeof(float));
    v8f e = exp_nonpositive(load(tail) - splat(top));
    for (int l = static_cast<int>(n - j); l < kLanes; ++l) e[l] = 0.0f;  // past the keys
    store(tail, e);
    std::memcpy(p + j, tail, (n - j) * sizeof(float));
    sum = sum + e;
  }
  return sum_lanes(sum);
}

// o[0, n) /= t (division, not a product with 1 / t: the bits of dividing one by one).
void divide(float* o, int64_t n, float t) {
  int64_t e = 0;
  for (; e + kLanes <= n; e += kLanes) store(o + e, load(o + e) / splat(t));
  for (; e < n; ++e) o[e] = o[e] / t;
}

// sum_lanes of 8 vectors at once, as one vector: [sum_lanes(a[0]), ..., sum_lanes(a[7])]
// up to the order of its lanes (see below), each by the very tree sum_lanes uses:
// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), so the bits are the same as one by one.
// Returns [a0, a2, a4, a6, a1, a3, a5, a7]'s sums.
inline v8f sum_lanes8(const v8f* a) {
  // lane l + lane l + 4, two vectors per result: [x0+x4, x1+x5, x2+x6, x3+x7, y0+y4, ...]
  auto half = [](v8f x, v8f y) {
    return __builtin_shufflevector(x, y, 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(x, y, 4, 5, 6, 7, 12, 13, 14, 15);
  };
  const v8f s01 = half(a[0], a[1]), s23 = half(a[2], a[3]);
  const v8f s45 = half(a[4], a[5]), s67 = half(a[6], a[7]);
  // (l0+l4) + (l2+l6) and (l1+l5) + (l3+l7), per input
  auto quarter = [](v8f x, v8f y) {
    return __builtin_shufflevector(x, y, 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(x, y, 2, 3, 10, 11, 6, 7, 14, 15);
  };
  const v8f t0 = quarter(s01, s23), t1 = quarter(s45, s67);
  return __builtin_shufflevector(t0, t1, 0, 2, 8, 10, 4, 6, 12, 14) +
         __builtin_shufflevector(t0, t1, 1, 3, 9, 11, 5, 7, 13, 15);
}

// scores[j] = (q . key j) * s for 8 keys, the same bits as dot<Vec>(q, key j, dim) * s:
// each key's products in W lanes in dim order, folded to 8, summed by sum_lanes' tree.
// dim % W == 0.
template <typename Vec, typename T>
inline void dot8(const float* q, const T* const* keys, int64_t dim, float s, float* scores) {
  constexpr int W = width<Vec>();
  // sum_lanes8 returns inputs 0, 2, 4, 6, 1, 3, 5, 7: keys fed in this order come out in order
  constexpr int kOrder[kLanes] = {0, 4, 1, 5, 2, 6, 3, 7};
  Vec acc[kLanes];
  for (int k = 0; k < kLanes; ++k) acc[k] = fill<Vec>(0.0f);
  for (int64_t d = 0; d < dim; d += W) {
    const Vec x = load_values<Vec>(q + d);
    for (int k = 0; k < kLanes; ++k) {
      acc[k] = fmadd(x, load_values<Vec>(keys[kOrder[k]] + d), acc[k]);
    }
  }
  v8f folded[kLanes];
  for (int k = 0; k < kLanes; ++k) folded[k] = fold(acc[k]);
  store(scores, sum_lanes8(folded) * splat(s));
}

// dot8 for two queries at once (each key's vectors loaded once for both): the same bits; it
// pays where a kv head serves several query heads at long contexts. One template for 1 and 2
// queries (acc[Q][8]) was measured slower for both, so the two stay apart.
template <typename T>
inline void dot8_two(const float* q0, const float* q1, const T* const* keys, int64_t dim,
                     float s, float* scores0, float* scores1) {
  constexpr int kOrder[kLanes] = {0, 4, 1, 5, 2, 6, 3, 7};
  v16f a0[kLanes], a1[kLanes];
  for (int k = 0; k < kLanes; ++k) a0[k] = a1[k] = fill<v16f>(0.0f);
  for (int64_t d = 0; d < dim; d += 16) {
    const v16f x0 = load_values<v16f>(q0 + d), x1 = load_values<v16f>(q1 + d);
    for (int k = 0; k < kLanes; ++k) {
      const v16f key = load_values<v16f>(keys[kOrder[k]] + d);
      a0[k] = fmadd(x0, key, a0[k]);
      a1[k] = fmadd(x1, key, a1[k]);
    }
  }
  v8f f0[kLanes], f1[kLanes];
  for (int k = 0; k < kLanes; ++k) {
    f0[k] = fold(a0[k]);
    f1[k] = fold(a1[k]);
  }
  store(scores0, sum_lanes8(f0) * splat(s));
  store(scores1, sum_lanes8(f1) * splat(s));
}

// The scores of the keys [j, j + 8) that a row sees (n of them in all) into p: 8 at once
// where all 8 are there, else one by one (the same bits).
template <typename Vec, typename T>
inline void score_block(const float* qg, const T* const* keys, int64_t j, int64_t n,
                        int64_t dim, float s, float* p) {
  if (j + kLanes <= n && dim % width<Vec>() == 0) {
    dot8<Vec>(qg, keys + j, dim, s, p + j);
    return;
  }
  for (int64_t jj = j; jj < std::min(j + kLanes, n); ++jj) {
    p[jj] = dot<Vec>(qg, keys[jj], dim) * s;
  }
}

// o_q[0, V * W) += w_q[j] * values[j][d, d + V * W) for keys j in [j0, j1) and each of Q
// queries q (heads sharing a kv head), in key order, each a fused multiply-add (so neither
// the width nor Q changes a bit): the sums kept in registers across those keys, loaded from
// and stored back to o_q between calls, so a caller that walks the keys in blocks gets the
// bits of one pass over all of them. A value is loaded once for the Q queries, and their
// Q x V sums are independent chains: one query's V chains alone waited on the multiply-add's
// latency (SmolLM2's 64-value heads: 4 chains, a quarter of the peak).
template <typename Vec, int V, int Q, typename T>
inline void weighted_values(const T* const* values, int64_t d, const float* const* w,
                            int64_t j0, int64_t j1, float* const* o) {
  constexpr int W = width<Vec>();
  Vec acc[Q][V];
  for (int q = 0; q < Q; ++q) {
    for (int i = 0; i < V; ++i) acc[q][i] = load_values<Vec>(o[q] + d + W * i);
  }
  for (int64_t j = j0; j < j1; ++j) {
    Vec v[V];
    for (int i = 0; i < V; ++i) v[i] = load_values<Vec>(values[j] + d + W * i);
    for (int q = 0; q < Q; ++q) {
      const Vec wj = fill<Vec>(w[q][j]);
      for (int i = 0; i < V; ++i) acc[q][i] = fmadd(wj, v[i], acc[q][i]);
    }
  }
  for (int q = 0; q < Q; ++q) {
    for (int i = 0; i < V; ++i) std::memcpy(o[q] + d + W * i, &acc[q][i], sizeof(Vec));
  }
}

// weighted_values for `count` queries, at most 16 / V at a time (the sums stay in registers).
template <typename Vec, int V, typename T>
inline void weighted_values_of(const T* const* values, int64_t d, const float* const* w,
                               int64_t count, int64_t j0, int64_t j1, float* const* o) {
  constexpr int kMost = V >= 8 ? 2 : 4;
  int64_t q = 0;
  for (; q + kMost <= count; q += kMost) {
    weighted_values<Vec, V, kMost>(values, d, w + q, j0, j1, o + q);
  }
  switch (count - q) {
    case 3: return weighted_values<Vec, V, 3>(values, d, w + q, j0, j1, o + q);
    case 2: return weighted_values<Vec, V, 2>(values, d, w + q, j0, j1, o + q);
    case 1: return weighted_values<Vec, V, 1>(values, d, w + q, j0, j1, o + q);
    default: return;
  }
}

// o_q[0, dim) += the weighted values of keys [j0, j1) for `count` queries, 128 values at a
// time in registers, then 64, 32, 16, 8; the rest key by key.
template <typename T>
inline void add_weighted_values(const T* const* values, int64_t dim, const float* const* w,
                                int64_t count, int64_t j0, int64_t j1, float* const* o) {
  int64_t d = 0;
  for (; d + 128 <= dim; d += 128) weighted_values_of<v16f, 8>(values, d, w, count, j0, j1, o);
  for (; d + 64 <= dim; d += 64) weighted_values_of<v16f, 4>(values, d, w, count, j0, j1, o);
  for (; d + 32 <= dim; d += 32) weighted_values_of<v16f, 2>(values, d, w, count, j0, j1, o);
  for (; d + 16 <= dim; d += 16) weighted_values_of<v16f, 1>(values, d, w, count, j0, j1, o);
  for (; d + 8 <= dim; d += 8) weighted_values_of<v8f, 1>(values, d, w, count, j0, j1, o);
  for (int64_t q = 0; q < count; ++q) {
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t e = d; e < dim; ++e) {
        o[q][e] = std::fma(w[q][j], as_float(values[j][e]), o[q][e]);
      }
    }
  }
}

// Rows whose keys nest: each row's keys are the previous row's followed by more (the rows of
// one request's chunk, without a sliding window). Such a run, cut every `kMaxRunRows` rows (a
// long prefill chunk would otherwise be one piece of work with a score per row per key), is
// one piece of work per kv head, so each key and value is read once for all its rows and
// heads. Returns the first row of each run, and rows as the last entry.
constexpr int64_t kMaxRunRows = 32;
std::vector<int64_t> nested_runs(const int64_t* slot, const int64_t* off, int64_t rows) {
  std::vector<int64_t> starts;
  for (int64_t r = 0; r < rows; ++r) {
    const bool extends = r > 0 && off[r + 1] - off[r] >= off[r] - off[r - 1] &&
                         std::equal(slot + off[r - 1], slot + off[r], slot + off[r]);
    if (!extends || r - starts.back() == kMaxRunRows) starts.push_back(r);
  }
  starts.push_back(rows);
  return starts;
}

// Runs halved, longest first, while the pieces of work are few and do not divide evenly
// among the threads (or until no run has two rows): a verification of 8 rows with 3 kv heads
// (SmolLM2) would otherwise be 3 pieces on 2 threads, one thread doing twice the other's work.
std::vector<int64_t> enough_runs(std::vector<int64_t> starts, int64_t kv_heads, int64_t threads) {
  auto pieces = [&] { return (static_cast<int64_t>(starts.size()) - 1) * kv_heads; };
  while (pieces() < 2 * threads && pieces() % threads != 0) {
    size_t longest = 0;
    for (size_t i = 0; i + 1 < starts.size(); ++i) {
      if (starts[i + 1] - starts[i] > starts[longest + 1] - starts[longest]) longest = i;
    }
    const int64_t length = starts[longest + 1] - starts[longest];
    if (length < 2) break;
    starts.insert(starts.begin() + longest + 1, starts[longest] + length / 2);
  }
  return starts;
}

// Keys are scored 8 at a time across all of a run's queries while those 8 stay in cache, and
// values weighed in blocks of this many keys.
constexpr int64_t kValueBlock = 32;

// The attention of every row (see the top of the file), the caches' values of type T.
template <typename T>
void attend(const at::Tensor& qc, const at::Tensor& kc, const at::Tensor& vc, const int64_t* slot,
            const int64_t* off, float s, at::Tensor& out);

template <typename T>
void attend(const at::Tensor& qc, const at::Tensor& kc, const at::Tensor& vc, const int64_t* slot,
            const int64_t* off, float s, at::Tensor& out) {
  const int64_t rows = qc.size(0), heads = qc.size(1), dim = qc.size(2);
  const int64_t kv_heads = kc.size(1);
  const float* qp = qc.data_ptr<float>();
  const T* kp = kc.data_ptr<T>();
  const T* vp = vc.data_ptr<T>();
  float* op = out.data_ptr<float>();
  const int64_t group = heads / kv_heads;
  const std::vector<int64_t> runs =
      enough_runs(nested_runs(slot, off, rows), kv_heads, at::get_num_threads());
  const int64_t num_runs = static_cast<int64_t>(runs.size()) - 1;
  at::parallel_for(0, num_runs * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, total;  // per query: its scores, its softmax sum
    std::vector<const T*> run_k, run_v;  // the run's longest key list, for this kv head
    std::vector<const float*> weights_of(group);  // a row's queries' softmax numerators
    std::vector<float*> outs_of(group);           // and outputs
    for (int64_t i = begin; i < end; ++i) {
      const int64_t run = i / kv_heads, kvh = i % kv_heads;
      const int64_t r0 = runs[run], r1 = runs[run + 1], last = r1 - 1;
      const int64_t first = off[last], n_max = off[last + 1] - off[last];
      const int64_t h0 = kvh * group;  // this kv head's first query head
      const int64_t queries = (r1 - r0) * group;
      scores.resize(queries * n_max);
      total.resize(queries);
      run_k.resize(n_max);
      run_v.resize(n_max);
      for (int64_t j = 0; j < n_max; ++j) {
        run_k[j] = kp + (slot[first + j] * kv_heads + kvh) * dim;
        run_v[j] = vp + (slot[first + j] * kv_heads + kvh) * dim;
      }
      // query (row r, head g) is number (r - r0) * group + g; row r sees the first keys(r)
      auto keys = [&](int64_t r) { return off[r + 1] - off[r]; };
      auto row_scores = [&](int64_t r, int64_t g) {
        return scores.data() + ((r - r0) * group + g) * n_max;
      };
      const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(T));
      for (int64_t j = 0; j < n_max; j += kLanes) {
        // the keys two blocks on and this block's values, asked for ahead: a step's caches
        // come from memory (the layer's were last read a step ago), where this op alone
        // finds them in cache
        for (int64_t jj = j + 2 * kLanes; jj < std::min(j + 3 * kLanes, n_max); ++jj) {
          prefetch_row(run_k[jj], row_bytes);
        }
        for (int64_t jj = j; jj < std::min(j + kLanes, n_max); ++jj) {
          prefetch_row(run_v[jj], row_bytes);
        }
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t n = keys(r);
          if (j >= n) continue;
          int64_t g = 0;
          if (dim % 16 == 0 && j + kLanes <= n) {
            for (; g + 2 <= group; g += 2) {
              const float* qg = qp + (r * heads + h0 + g) * dim;
              dot8_two(qg, qg + dim, run_k.data() + j, dim, s, row_scores(r, g) + j,
                       row_scores(r, g + 1) + j);
            }
          }
          for (; g < group; ++g) {
            const float* qg = qp + (r * heads + h0 + g) * dim;
            if (dim % 16 == 0) {
              score_block<v16f>(qg, run_k.data(), j, n, dim, s, row_scores(r, g));
            } else {
              score_block<v8f>(qg, run_k.data(), j, n, dim, s, row_scores(r, g));
            }
          }
        }
      }
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t g = 0; g < group; ++g) {
          float* p = row_scores(r, g);
          total[(r - r0) * group + g] = softmax_numerators(p, keys(r), largest(p, keys(r)));
        }
      }
      for (int64_t r = r0; r < r1; ++r) {
        std::fill(op + (r * heads + h0) * dim, op + (r * heads + h0 + group) * dim, 0.0f);
      }
      for (int64_t j = 0; j < n_max; j += kValueBlock) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t j1 = std::min(j + kValueBlock, keys(r));
          if (j >= j1) continue;
          for (int64_t g = 0; g < group; ++g) {
            weights_of[g] = row_scores(r, g);
            outs_of[g] = op + (r * heads + h0 + g) * dim;
          }
          add_weighted_values(run_v.data(), dim, weights_of.data(), group, j, j1, outs_of.data());
        }
      }
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t g = 0; g < group; ++g) {
          divide(op + (r * heads + h0 + g) * dim, dim, total[(r - r0) * group + g]);
        }
      }
    }
  });
}

}  // namespace

namespace SPINSERVE_OPS {

at::Tensor row_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                         const at::Tensor& slots, const at::Tensor& offsets, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat, "q must be [rows, heads, dim] f32");
  const auto kind = k_cache.scalar_type();
  TORCH_CHECK(k_cache.dim() == 3 && (kind == at::kFloat || kind == at::kHalf) &&
                  v_cache.sizes() == k_cache.sizes() && v_cache.scalar_type() == kind,
              "k_cache and v_cache must be [slots, kv_heads, dim], both float32 or both float16");
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
  const float s = static_cast<float>(scale);
  if (kind == at::kHalf) {
    attend<at::Half>(qc, kc, vc, slot, off, s, out);
  } else {
    attend<float>(qc, kc, vc, slot, off, s, out);
  }
  return out;
}

}  // namespace SPINSERVE_OPS

// 8- and 16-float vectors (GCC vector extensions: AVX or AVX-512 where the CPU has it,
// narrower pieces otherwise, the same operations lane by lane, so every build gives the same
// bits) and the elementwise functions our kernels compute on them.
#pragma once

#include <cstdint>
#include <cstring>

namespace spinserve_vec8 {

constexpr int kLanes = 8;
typedef float v8f __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t v8i __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline v8f load(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }

// 16 floats: one AVX-512 register (two AVX ones, four SSE ones), for elementwise work, where
// the width does not change a bit (each lane does the same operations).
typedef float v16f __attribute__((vector_size(16 * sizeof(float))));
typedef int32_t v16i __attribute__((vector_size(16 * sizeof(int32_t))));

// The lanes of a float vector type.
template <typename F>
constexpr int width() {
  return static_cast<int>(sizeof(F) / sizeof(float));
}

// x in every lane: one broadcast (a loop over the lanes compiled, for a value not known at
// compile time, to a masked load per lane).
template <typename F>
inline F fill(float x) {
  static_assert(width<F>() == 8 || width<F>() == 16, "8- or 16-float vectors");
  if constexpr (width<F>() == 8) {
    return F{x, x, x, x, x, x, x, x};
  } else {
    return F{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
  }
}

inline v8f splat(float x) { return fill<v8f>(x); }

// e^x for x <= 0 (x - max of a softmax), to about 2 ulp; below -87 the result is 2^-126.
// F, I: a float vector and the int32 vector of its width (v8f, v8i or v16f, v16i).
template <typename F, typename I>
inline F exp_nonpositive_of(F x) {
  const F lo = fill<F>(-87.0f);
  x = x < lo ? lo : x;
  const F round = fill<F>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const F n = (x * fill<F>(1.44269504088896341f) + round) - round;
  const F r = (x - n * fill<F>(0.693359375f)) - n * fill<F>(-2.12194440e-4f);
  F p = fill<F>(1.9875691500e-4f);
  p = p * r + fill<F>(1.3981999507e-3f);
  p = p * r + fill<F>(8.3334519073e-3f);
  p = p * r + fill<F>(4.1665795894e-2f);
  p = p * r + fill<F>(1.6666665459e-1f);
  p = p * r + fill<F>(5.0000001201e-1f);
  const F y = (p * (r * r) + r) + fill<F>(1.0f);
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  F scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

inline v8f exp_nonpositive(v8f x) { return exp_nonpositive_of<v8f, v8i>(x); }

// silu(g) = g * sigmoid(g), with e = exp(-|g|) <= 1 (no overflow for any g):
// sigmoid(g) = 1 / (1 + e) for g >= 0, e / (1 + e) for g < 0.
template <typename F, typename I>
inline F silu_of(F g) {
  const I negative = g < fill<F>(0.0f);
  const F e = exp_nonpositive_of<F, I>(negative ? g : -g);
  const F sigmoid = (negative ? e : fill<F>(1.0f)) / (fill<F>(1.0f) + e);
  return g * sigmoid;
}

}  // namespace spinserve_vec8

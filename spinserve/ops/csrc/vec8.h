// 8-float vectors (GCC vector extensions: AVX where the CPU has it, two SSE halves
// otherwise, the same operations lane by lane, so both builds give the same bits) and the
// elementwise functions our kernels compute on them.
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

inline v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }

// e^x for x <= 0 (x - max of a softmax), to about 2 ulp; below -87 the result is 2^-126.
inline v8f exp_nonpositive(v8f x) {
  const v8f lo = splat(-87.0f);
  x = x < lo ? lo : x;
  const v8f round = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const v8f n = (x * splat(1.44269504088896341f) + round) - round;
  const v8f r = (x - n * splat(0.693359375f)) - n * splat(-2.12194440e-4f);
  v8f p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  const v8f y = (p * (r * r) + r) + splat(1.0f);
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8f scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// silu(g) = g * sigmoid(g), with e = exp(-|g|) <= 1 (no overflow for any g):
// sigmoid(g) = 1 / (1 + e) for g >= 0, e / (1 + e) for g < 0.
inline v8f silu(v8f g) {
  const v8i negative = g < splat(0.0f);
  const v8f e = exp_nonpositive(negative ? g : -g);
  const v8f sigmoid = (negative ? e : splat(1.0f)) / (splat(1.0f) + e);
  return g * sigmoid;
}

}  // namespace spinserve_vec8

// Activations rounded to int8 for our block kernels: n values (a multiple of 32) share one
// scale d = max|x| / 127 and become q = round_half_even(x * 127 / max|x|), clipped to +-127,
// with the sum of each 16 rounded values. Every step is elementwise or an exact integer sum,
// so the AVX2 code and the portable loop give the same bits. It runs once per row and block
// of every linear in a step: the scalar loop cost ~1 us per 256 values (~40 us for one row of
// the 1.5B's 8960-wide down projection), the vector one a small fraction of that.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace spinserve_quantize {

// Returns d; writes q[0..n) and sum16[0..n/16).
inline float quantize_int8(const float* x, int64_t n, int8_t* q, int32_t* sum16) {
#if defined(__AVX2__)
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  // max(|x|, m) keeps m where |x| is NaN, as std::fmax does
  for (int64_t i = 0; i < n; i += 8) {
    m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), m);
  }
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  const float amax = _mm_cvtss_f32(h);
#else
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(x[i]));
#endif
  if (amax == 0.0f) {
    std::memset(q, 0, static_cast<size_t>(n));
    std::memset(sum16, 0, static_cast<size_t>(n / 16) * sizeof(int32_t));
    return 0.0f;
  }
  const float inv = 127.0f / amax;
#if defined(__AVX2__)
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t i = 0; i < n; i += 32) {
    __m256i v[4];
    for (int k = 0; k < 4; ++k) {
      const __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * k), vinv),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v[k] = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, r)));
    }
    for (int k = 0; k < 2; ++k) {
      const __m256i s = _mm256_add_epi32(v[2 * k], v[2 * k + 1]);
      __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      t = _mm_hadd_epi32(t, t);
      t = _mm_hadd_epi32(t, t);
      sum16[i / 16 + k] = _mm_cvtsi128_si32(t);
    }
    // packs interleave 128-bit halves; the permutation restores column order
    const __m256i w =
        _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i),
                        _mm256_permutevar8x32_epi32(w, order));
  }
#else
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::fmin(127.0f, std::fmax(-127.0f, std::nearbyint(x[i] * inv)));
    q[i] = static_cast<int8_t>(v);
  }
  for (int64_t j = 0; j < n / 16; ++j) {
    int32_t sum = 0;
    for (int64_t i = 0; i < 16; ++i) sum += q[16 * j + i];
    sum16[j] = sum;
  }
#endif
  return amax / 127.0f;
}

}  // namespace spinserve_quantize

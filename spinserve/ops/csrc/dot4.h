// One step of the interleaved kernels (block_matmul.cpp's Q4_Kx8 and Q6_Kx8, small_blocks.cpp's
// Q5_0x8 and Q8_0x8): each of 8 lanes (one weight row each) adds the dot product of its 4
// unsigned weight bytes in u with the same 4 signed activation bytes at x.
#pragma once

#if defined(__AVX2__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace spinserve_dot4 {

// acc + the dot products of each lane's 4 unsigned bytes of u with the 4 signed bytes at x
// (the same 4 for every lane): AVX512-VNNI's dpbusd, else maddubs + madd (exact while the
// pairs stay within int16: weights up to 63 with |x| <= 127).
inline __m256i dot4(__m256i acc, __m256i u, const int8_t* x) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  // the 4 bytes as an embedded broadcast operand: one instruction, where a broadcast load and
  // the product were two (GCC does not fold the broadcast into dpbusd itself)
  const auto& quad = *reinterpret_cast<const int32_t*>(x);
  __asm__("vpdpbusd %2%{1to8%}, %1, %0" : "+v"(acc) : "v"(u), "m"(quad));
  return acc;
#else
  int32_t quad;
  std::memcpy(&quad, x, 4);
  const __m256i s = _mm256_set1_epi32(quad);
#if defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
#endif
}

}  // namespace spinserve_dot4

#endif

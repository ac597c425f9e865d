// Whether the interleaved kernels run two chunks side by side in 512-bit registers (16 output
// columns per dpbusd) or one chunk in 256-bit ones (8 columns). Same bits either way (the
// lanes do the same operations); the speed is the CPU's: Zen 4 issues two 256-bit dpbusd a
// cycle but one 512-bit (the same multiply-adds, and the wider pass measured slower), Zen 5
// two of either (twice the multiply-adds). So the choice is measured once per process: the
// multiply-adds a second of 512-bit against 256-bit dpbusd in a loop of nothing else (~0.2 ms),
// wide where it does at least 1.5x. SPINSERVE_WIDE_KERNELS=0 or 1 overrides the measurement;
// tests switch it with the `wide_passes` op. The one switch for the library is library.cpp's
// (`wide_mode` in kernels.h); this file has the measurement and the passes' shared pieces.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && \
    defined(__AVX512VL__)
#define SPINSERVE_WIDE 1
#include <immintrin.h>
#endif

namespace spinserve_wide {
namespace {

constexpr const char* kEnvVar = "SPINSERVE_WIDE_KERNELS";
constexpr int kUnknown = -1;

#if defined(SPINSERVE_WIDE)
// Seconds of 8 independent chains of `iterations` dpbusd each, 512-bit or 256-bit.
template <bool ZMM>
inline double dpbusd_seconds(long iterations) {
  const auto start = std::chrono::steady_clock::now();
  for (long i = 0; i < iterations; ++i) {
    if constexpr (ZMM) {
      __asm__ volatile(
          "vpdpbusd %%zmm8, %%zmm9, %%zmm0\n\tvpdpbusd %%zmm8, %%zmm9, %%zmm1\n\t"
          "vpdpbusd %%zmm8, %%zmm9, %%zmm2\n\tvpdpbusd %%zmm8, %%zmm9, %%zmm3\n\t"
          "vpdpbusd %%zmm8, %%zmm9, %%zmm4\n\tvpdpbusd %%zmm8, %%zmm9, %%zmm5\n\t"
          "vpdpbusd %%zmm8, %%zmm9, %%zmm6\n\tvpdpbusd %%zmm8, %%zmm9, %%zmm7\n\t" ::
              : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7");
    } else {
      __asm__ volatile(
          "vpdpbusd %%ymm8, %%ymm9, %%ymm0\n\tvpdpbusd %%ymm8, %%ymm9, %%ymm1\n\t"
          "vpdpbusd %%ymm8, %%ymm9, %%ymm2\n\tvpdpbusd %%ymm8, %%ymm9, %%ymm3\n\t"
          "vpdpbusd %%ymm8, %%ymm9, %%ymm4\n\tvpdpbusd %%ymm8, %%ymm9, %%ymm5\n\t"
          "vpdpbusd %%ymm8, %%ymm9, %%ymm6\n\tvpdpbusd %%ymm8, %%ymm9, %%ymm7\n\t" ::
              : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7");
    }
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Whether 512-bit dpbusd does >= 1.5x the multiply-adds a second of 256-bit here (the best
// of 5 timings each, alternating, so a busy moment does not decide it).
inline bool wide_pays() {
  constexpr long kIterations = 4000;  // 32k instructions, ~10 us at 2 a cycle
  double zmm = 1e9, ymm = 1e9;
  for (int i = 0; i < 5; ++i) {
    zmm = std::min(zmm, dpbusd_seconds<true>(kIterations));
    ymm = std::min(ymm, dpbusd_seconds<false>(kIterations));
  }
  return ymm / zmm * 2.0 >= 1.5;  // a 512-bit dpbusd does twice the work of a 256-bit one
}
#endif

#if defined(SPINSERVE_WIDE)
// The pieces every wide pass shares. A pair is two consecutive groups of 8 weight rows (their
// chunks for the same block at `a` and `b`), side by side in one 512-bit register: lanes 0-7
// the first group's rows, 8-15 the second's.

// acc + per lane the dot of its 4 unsigned weight bytes in u with the same 4 signed bytes at
// x: dpbusd with the 4 bytes as an embedded broadcast (as dot4.h's 256-bit dot4).
inline __m512i dot4_wide(__m512i acc, __m512i u, const int8_t* x) {
  const auto& quad = *reinterpret_cast<const int32_t*>(x);
  __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u), "m"(quad));
  return acc;
}

// 32 bytes at a, then 32 at b.
inline __m512i load_pair(const uint8_t* a, const uint8_t* b) {
  return _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
}

// 16 bytes at a, then 16 at b.
inline __m256i load_pair16(const uint8_t* a, const uint8_t* b) {
  return _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(b)), 1);
}

// 8 f16 at a, then 8 at b, as 16 floats.
inline __m512 halves_pair(const uint8_t* a, const uint8_t* b) {
  return _mm512_cvtph_ps(load_pair16(a, b));
}

// Where the pair's first group prefetches from when its chunk is `offset` bytes into a group
// of `group_bytes` and the prefetch reaches `ahead` bytes on: the groups are consecutive, so
// past its end it would fall in the second group (being read); it goes to the next pair's
// second group instead.
inline const uint8_t* first_prefetch_base(const uint8_t* first, int64_t offset, int64_t ahead,
                                          int64_t group_bytes) {
  return first + (offset + ahead < group_bytes ? 0 : 2 * group_bytes);
}
#endif

}  // namespace
}  // namespace spinserve_wide

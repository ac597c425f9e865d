// Whether the interleaved kernels run two chunks side by side in 512-bit registers (16 output
// columns per dpbusd) or one chunk in 256-bit ones (8 columns). Same bits either way (the
// lanes do the same operations); the speed is the CPU's: Zen 4 issues two 256-bit dpbusd a
// cycle but one 512-bit (the same multiply-adds, and the wider pass measured slower), Zen 5
// two of either (twice the multiply-adds). So the choice is measured once per process: the
// multiply-adds a second of 512-bit against 256-bit dpbusd in a loop of nothing else (~0.2 ms),
// wide where it does at least 1.5x. SPINSERVE_WIDE_KERNELS=0 or 1 overrides the measurement;
// tests switch it with each library's `*_wide` op.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && \
    defined(__AVX512VL__)
#define SPINSERVE_WIDE 1
#include <immintrin.h>
#endif

// Internal linkage: each kernel library keeps its own mode (an inline function's static would
// otherwise be one object across the libraries a process loads, by symbol interposition).
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

inline std::atomic<int>& mode_ref() {
  static std::atomic<int> mode{kUnknown};
  return mode;
}

// 1 if the wide passes run, 0 if not; decided on the first call (see the top of the file).
inline int mode() {
  int m = mode_ref().load(std::memory_order_relaxed);
  if (m != kUnknown) return m;
#if defined(SPINSERVE_WIDE)
  const char* env = std::getenv(kEnvVar);
  if (env != nullptr && (std::strcmp(env, "0") == 0 || std::strcmp(env, "1") == 0)) {
    m = env[0] - '0';
  } else {
    m = wide_pays() ? 1 : 0;
  }
#else
  m = 0;  // built without AVX-512: there are no wide passes
#endif
  mode_ref().store(m, std::memory_order_relaxed);
  return m;
}

// Set the mode (0 or 1; kUnknown: measure again on the next use); returns the mode before.
// Where the build has no wide passes, 1 reads back as 0.
inline int set_mode(int m) {
  const int before = mode();
#if defined(SPINSERVE_WIDE)
  mode_ref().store(m, std::memory_order_relaxed);
#else
  (void)m;
#endif
  return before;
}

}  // namespace
}  // namespace spinserve_wide

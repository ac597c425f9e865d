// Our one kernel library: its torch ops, and the one switch of the interleaved kernels' wide
// passes. The parts call each other directly (kernels.h); the ops are how Python calls them.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "formats.h"
#include "kernels.h"
#include "wide.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace SPINSERVE_OPS {
namespace {

// The wide passes' mode for the whole library, decided once (wide.h): kUnknown until then.
std::atomic<int> wide_passes_mode{spinserve_wide::kUnknown};

int decide_wide_mode() {
#if defined(SPINSERVE_WIDE)
  const char* env = std::getenv(spinserve_wide::kEnvVar);
  if (env != nullptr && (std::strcmp(env, "0") == 0 || std::strcmp(env, "1") == 0)) {
    return env[0] - '0';
  }
  return spinserve_wide::wide_pays() ? 1 : 0;
#else
  return 0;  // built without AVX-512: there are no wide passes
#endif
}

at::Tensor block_matmul(const at::Tensor& x, const at::Tensor& blocks, int64_t qtype,
                        int64_t n_out, bool portable) {
  return block_matmul_many(x, {blocks}, {qtype}, {n_out}, portable)[0];
}

at::Tensor small_block_matmul(const at::Tensor& x, const at::Tensor& blocks, int64_t qtype,
                              int64_t n_out, bool portable) {
  return small_block_matmul_many(x, {blocks}, {qtype}, {n_out}, portable)[0];
}

int64_t wide_passes(int64_t mode) { return set_wide_mode(static_cast<int>(mode)); }

// The format table as compiled, one "name id base weights bytes rows" line per format, for
// the test that holds spinserve/ops/formats.py to it.
std::vector<std::string> formats() {
  std::vector<std::string> rows;
  for (const auto& f : spinserve_formats::kFormats) {
    rows.push_back(std::string(f.name) + " " + std::to_string(f.id) + " " +
                   std::to_string(f.base) + " " + std::to_string(f.weights) + " " +
                   std::to_string(f.bytes) + " " + std::to_string(f.rows));
  }
  return rows;
}

}  // namespace

int wide_mode() {
  int m = wide_passes_mode.load(std::memory_order_relaxed);
  if (m != spinserve_wide::kUnknown) return m;
  m = decide_wide_mode();
  wide_passes_mode.store(m, std::memory_order_relaxed);
  return m;
}

int set_wide_mode(int mode) {
  const int before = wide_mode();
#if defined(SPINSERVE_WIDE)
  wide_passes_mode.store(mode, std::memory_order_relaxed);
#else
  (void)mode;  // where the build has no wide passes, 1 reads back as 0
#endif
  return before;
}

}  // namespace SPINSERVE_OPS

// TORCH_LIBRARY pastes its namespace argument into a name: through this, the macro's value.
#define SPINSERVE_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)

SPINSERVE_LIBRARY(SPINSERVE_OPS, m) {
  using namespace SPINSERVE_OPS;
  // The wide passes (wide.h): set 0 or 1, or -1 to measure again; returns the mode before.
  m.def("wide_passes(int mode) -> int", &wide_passes);
  m.def("formats() -> str[]", &formats);
  m.def("block_matmul(Tensor x, Tensor blocks, int qtype, int n_out, bool portable) -> Tensor");
  m.impl("block_matmul", c10::DispatchKey::CPU, &block_matmul);
  m.def("block_matmul_many(Tensor x, Tensor[] blocks, int[] qtypes, int[] n_outs, bool portable) "
        "-> Tensor[]");
  m.impl("block_matmul_many", c10::DispatchKey::CPU, &block_matmul_many);
  m.def("small_block_matmul(Tensor x, Tensor blocks, int qtype, int n_out, bool portable) -> "
        "Tensor");
  m.impl("small_block_matmul", c10::DispatchKey::CPU, &small_block_matmul);
  m.def("small_block_matmul_many(Tensor x, Tensor[] blocks, int[] qtypes, int[] n_outs, "
        "bool portable) -> Tensor[]");
  m.impl("small_block_matmul_many", c10::DispatchKey::CPU, &small_block_matmul_many);
  m.def("row_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor offsets, "
        "float scale) -> Tensor");
  m.impl("row_attention", c10::DispatchKey::CPU, &row_attention);
  m.def("decoder_layers(Tensor hidden, Tensor cos, Tensor sin, Tensor[] k_caches, "
        "Tensor[] v_caches, Tensor slot_mapping, Tensor slots, Tensor offsets, Tensor[] weights, "
        "int[] kinds, int heads, int kv_heads, float eps, float scale) -> Tensor");
  m.impl("decoder_layers", c10::DispatchKey::CPU, &decoder_layers);
}

// The block formats our matmul kernels multiply, defined once for C++ and Python alike:
// GGUF's own (ggml's type numbers) and ours, the same blocks with 8 weight rows interleaved
// (1000 + the GGUF number; ops/interleave.py has their byte order). spinserve/ops/formats.py
// reads the rows of SPINSERVE_FORMATS from this file, and the `formats` op returns the table
// as compiled, so a test holds the two to each other.
//
// Columns: name, id, the GGUF type it holds, weights per block, bytes per block and weight
// row (Q4_Kx8 keeps Q4_K's 6-bit scales and mins as whole bytes: 4 more), weight rows per
// chunk (1: GGUF's row layout).
#pragma once

#include <cstdint>

#define SPINSERVE_FORMATS(X)          \
  X(Q4_0, 2, 2, 32, 18, 1)            \
  X(Q4_1, 3, 3, 32, 20, 1)            \
  X(Q5_0, 6, 6, 32, 22, 1)            \
  X(Q8_0, 8, 8, 32, 34, 1)            \
  X(Q4_K, 12, 12, 256, 144, 1)        \
  X(Q6_K, 14, 14, 256, 210, 1)        \
  X(Q4_0x8, 1002, 2, 32, 18, 8)       \
  X(Q4_1x8, 1003, 3, 32, 20, 8)       \
  X(Q5_0x8, 1006, 6, 32, 22, 8)       \
  X(Q8_0x8, 1008, 8, 32, 34, 8)       \
  X(Q4_Kx8, 1012, 12, 256, 148, 8)    \
  X(Q6_Kx8, 1014, 14, 256, 210, 8)

namespace spinserve_formats {

// kQ4_0 = 2, ..., kQ4_Kx8 = 1012, kQ6_Kx8 = 1014
enum Id : int64_t {
#define SPINSERVE_FORMAT_ID(name, id, base, weights, bytes, rows) k##name = id,
  SPINSERVE_FORMATS(SPINSERVE_FORMAT_ID)
#undef SPINSERVE_FORMAT_ID
};

struct Format {
  const char* name;
  int64_t id, base, weights, bytes, rows;
};

inline constexpr Format kFormats[] = {
#define SPINSERVE_FORMAT_ROW(name, id, base, weights, bytes, rows) \
  {#name, id, base, weights, bytes, rows},
    SPINSERVE_FORMATS(SPINSERVE_FORMAT_ROW)
#undef SPINSERVE_FORMAT_ROW
};

// The row of `id`, or nullptr for an id not in the table.
constexpr const Format* find(int64_t id) {
  for (const Format& f : kFormats) {
    if (f.id == id) return &f;
  }
  return nullptr;
}

constexpr bool known(int64_t id) { return find(id) != nullptr; }
// 8 weight rows per chunk (a weight tensor has a row of chunks per 8 output features).
constexpr bool interleaved(int64_t id) { return known(id) && find(id)->rows > 1; }
// The GGUF type whose blocks `id` holds (itself for a GGUF type).
constexpr int64_t base(int64_t id) { return known(id) ? find(id)->base : id; }
// A k-quant super-block of 256 weights (else a 32-weight block).
constexpr bool k_quant(int64_t id) { return known(id) && find(id)->weights == 256; }
// Bytes per block and weight row (0 for an id not in the table).
constexpr int64_t bytes(int64_t id) { return known(id) ? find(id)->bytes : 0; }
// Bytes of a chunk of an interleaved format (8 rows' blocks), or of one row's block.
constexpr int64_t chunk_bytes(int64_t id) { return known(id) ? find(id)->bytes * find(id)->rows : 0; }

}  // namespace spinserve_formats

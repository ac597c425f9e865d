// The one order in which our kernels add 8 float lanes into a value: a fixed tree, the same
// on every code path (the AVX2 reduction in block_matmul.cpp adds in this order too), so a
// result never depends on how its lanes were filled.
#pragma once

namespace spinserve_lanes {

// l[0..7]: a float array or an 8-float vector
template <typename Lanes>
inline float sum_lanes(const Lanes& l) {
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

}  // namespace spinserve_lanes

// The torch.ops namespace our kernels register in. A build flag (-DSPINSERVE_OPS=...) can
// change it, so a second build of the same source (the portable one, in tests) loads beside
// the first. Each kernel file registers its ops with SPINSERVE_FRAGMENT(SPINSERVE_OPS, m).
#pragma once

#include <torch/library.h>

#ifndef SPINSERVE_OPS
#define SPINSERVE_OPS spinserve
#endif
#define SPINSERVE_FRAGMENT(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)

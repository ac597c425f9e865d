// The namespace our kernels live in, C++ and torch.ops alike. A build flag
// (-DSPINSERVE_OPS=...) can change it, so a second build of the same source (the AVX2 and
// portable ones, in tests; an old revision, in benchmarks/kernel_ab.py) loads beside the first
// with none of its symbols or ops shared.
#pragma once

#ifndef SPINSERVE_OPS
#define SPINSERVE_OPS spinserve
#endif

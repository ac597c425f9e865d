"""OpenMP worker pools, and letting go of one.

torch's CPU operators and our kernels run their parallel loops on OpenMP (the GNU libgomp
that torch's wheel ships). Every OS thread that starts a parallel loop gets a pool of worker
threads of its own, kept for that thread's life. Once the process holds more such workers
than there are cores, libgomp stops letting idle workers spin between loops (100 spins
instead of ~300,000) and puts them to sleep, so that each of the hundreds of short loops of
a forward wakes them through the kernel. Measured on 2 cores (Zen 4), a second thread's pool
made the Qwen 1.5B's decode 1.15x slower and SmolLM2's drafting rounds 2x slower.

Hence one thread does all of an engine's model work (`engine.compute_lane`), and the thread
that loaded the models hands its pool back first.
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache
from pathlib import Path

logger = logging.getLogger("spinserve.runtime")

_OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: release threads, keep nothing for later


@cache
def _libgomp() -> ctypes.CDLL | None:
    """The libgomp this process has loaded (torch's), or None (another OpenMP, or none)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split()[-1]
        if "libgomp" in Path(path).name:
            try:
                lib = ctypes.CDLL(path)  # the handle of the copy already loaded
                lib.omp_pause_resource_all.argtypes = [ctypes.c_int]
                return lib
            except (OSError, AttributeError):
                return None
    return None


def release_openmp_workers() -> bool:
    """Let go of the calling thread's OpenMP worker pool (OpenMP 5's
    ``omp_pause_resource_all``); the thread gets a new pool if it runs a parallel loop
    again. False where this process has no libgomp to ask (nothing to do then)."""
    lib = _libgomp()
    if lib is None:
        return False
    if lib.omp_pause_resource_all(_OMP_PAUSE_SOFT) != 0:
        logger.debug("omp_pause_resource_all refused (called inside a parallel region)")
        return False
    return True

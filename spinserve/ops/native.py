"""Our C++ kernels: compiled once per machine on first use, cached, loaded as torch ops.

The source lives in ``spinserve/ops/csrc``. It is compiled with the machine's C++ compiler
(``$CXX`` or ``g++``) for the CPU it runs on (``-march=native``) against the installed torch,
into ``<cache>/kernels/<name>-<key>.so``, where the key hashes everything the binary depends
on (source, flags, torch version, compiler, CPU features): a change of any of them builds a
new file, never loads a stale one. Building takes about 10 seconds; concurrent first users
wait on a file lock instead of racing, and a half-written library is never loaded.

A machine without a compiler still runs: `load` raises `KernelUnavailable` and callers fall
back to torch's kernels (`available` says which applies, once, in the log).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import torch

from spinserve.config.paths import resolve_cache_dir

SOURCE_DIR = Path(__file__).parent / "csrc"
# Set to 1 to skip the kernels (and the compiler) entirely: torch's kernels only.
DISABLE_ENV_VAR = "SPINSERVE_NO_NATIVE"
# Kernels whose ops call other kernels' ops (through torch's dispatcher): those load first.
_DEPENDS = {"decoder_layers": ("block_matmul", "small_blocks", "row_attention")}
_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared", "-std=c++20")
log = logging.getLogger(__name__)


class KernelUnavailable(RuntimeError):
    """Our kernel cannot be built or loaded here (no compiler, a build error...)."""


def available(name: str = "block_matmul") -> bool:
    """Whether kernel ``name`` loads here; the first failure is logged with its reason."""
    if _disabled():
        return False
    try:
        load(name)
    except KernelUnavailable as exc:
        _warn_once(str(exc))
        return False
    return True


@cache
def _warn_once(message: str) -> None:
    log.warning("%s; using torch's kernels instead", message)


# Builds of the same source for tests: each code path of a kernel. Each is -march=native less
# some features, so it runs on this CPU whatever it has (on one without AVX-512, "avx2" is the
# native build again; without AVX2, every variant is the plain C++ path).
VARIANTS = {
    "native": ("spinserve", ()),  # everything this CPU has (AVX-512 where it is there)
    "avx2": ("spinserve_avx2", ("-mno-avx512f",)),  # the AVX2 + FMA paths, no AVX-512
    "portable": ("spinserve_portable", ("-mno-avx2", "-mno-avx512f")),  # plain C++
}


def load(name: str = "block_matmul", variant: str = "native") -> str:
    """Build (if needed) and load kernel ``name``; returns the torch.ops namespace of its ops.

    ``variant`` (tests only) builds the same source with fewer CPU features, under its own
    namespace (`VARIANTS`), so tests can check that every code path gives the same bits. A
    process loads each kernel once (a second library registering the same ops would abort it).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown kernel variant {variant!r}; known: {', '.join(VARIANTS)}")
    return _load(name, variant)


@cache
def _load(name: str, variant: str) -> str:
    if _disabled():
        raise KernelUnavailable(f"native kernels disabled by {DISABLE_ENV_VAR}")
    for dependency in _DEPENDS.get(name, ()):
        _load(dependency, variant)
    namespace, extra = VARIANTS[variant]
    flags = [*_FLAGS, f"-DSPINSERVE_OPS={namespace}", *extra]
    source = SOURCE_DIR / f"{name}.cpp"
    library = _build(source, flags)
    try:
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError) as exc:
        raise KernelUnavailable(f"cannot load {library}: {exc}") from exc
    return namespace


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV_VAR, "") not in ("", "0")


def _compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise KernelUnavailable(f"no C++ compiler ({cxx!r} is not on PATH)")
    return cxx


def _command(cxx: str, source: Path, flags: list[str], out: Path) -> list[str]:
    root = Path(torch.__file__).parent
    torch_lib = root / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = (root / "include", root / "include" / "torch" / "csrc" / "api" / "include")
    return [
        cxx,
        *flags,
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *(f"-I{p}" for p in includes),
        str(source),
        f"-L{torch_lib}",
        "-lc10",
        "-ltorch_cpu",
        f"-Wl,-rpath,{torch_lib}",
        "-o",
        str(out),
    ]


def _key(cxx: str, source: Path, flags: list[str]) -> str:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256()
    headers = b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))
    for part in (
        source.read_bytes(),
        headers,
        " ".join(flags).encode(),
        torch.__version__.encode(),
        version.encode(),
        _cpu_features().encode(),
        sys.version.encode(),
    ):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def _build(source: Path, flags: list[str]) -> Path:
    cxx = _compiler()
    folder = resolve_cache_dir() / "kernels"
    library = folder / f"{source.stem}-{_key(cxx, source, flags)}.so"
    if library.is_file():
        return library
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / ".lock", "w")  # noqa: SIM115 (held across the build)
    except OSError as exc:
        raise KernelUnavailable(f"cannot write kernels to {folder}: {exc}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if library.is_file():  # built by another process while we waited
            return library
        log.info("compiling %s for this machine (once, ~10 s)", source.name)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            out = Path(tmp) / library.name
            result = subprocess.run(
                _command(cxx, source, flags, out), capture_output=True, text=True
            )
            if result.returncode != 0:
                tail = "\n".join(result.stderr.strip().splitlines()[-15:])
                raise KernelUnavailable(f"compiling {source.name} failed:\n{tail}")
            out.replace(library)
    return library

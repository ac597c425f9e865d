"""Our C++ kernels: one library, compiled once per machine on first use, cached, loaded as torch
ops.

The source lives in ``spinserve/ops/csrc``: every ``.cpp`` there is compiled (in parallel, one
compiler per core) with the machine's C++ compiler (``$CXX`` or ``g++``) for the CPU it runs
on (``-march=native``) against the installed torch, and linked into one
``<cache>/kernels/spinserve-<key>.so``, where the key hashes everything the binary depends on
(sources, flags, torch version, compiler, CPU features): a change of any of them builds a new
file, never loads a stale one. Concurrent first users wait on a file lock instead of racing,
and a half-written library is never loaded.

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
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch

from spinserve.config.paths import resolve_cache_dir

SOURCE_DIR = Path(__file__).parent / "csrc"
# Set to 1 to skip the kernels (and the compiler) entirely: torch's kernels only.
DISABLE_ENV_VAR = "SPINSERVE_NO_NATIVE"
_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-std=c++20")
log = logging.getLogger(__name__)


class KernelUnavailable(RuntimeError):
    """Our kernels cannot be built or loaded here (no compiler, a build error...)."""


def available() -> bool:
    """Whether our kernels load here; the first failure is logged with its reason."""
    if _disabled():
        return False
    try:
        load()
    except KernelUnavailable as exc:
        _warn_once(str(exc))
        return False
    return True


@cache
def _warn_once(message: str) -> None:
    log.warning("%s; using torch's kernels instead", message)


# Builds of the same source for tests: each code path of the kernels. Each is -march=native
# less some features, so it runs on this CPU whatever it has (on one without AVX-512, "avx2" is
# the native build again; without AVX2, every variant is the plain C++ path).
VARIANTS = {
    "native": ("spinserve", ()),  # everything this CPU has (AVX-512 where it is there)
    "avx2": ("spinserve_avx2", ("-mno-avx512f",)),  # the AVX2 + FMA paths, no AVX-512
    "portable": ("spinserve_portable", ("-mno-avx2", "-mno-avx512f")),  # plain C++
}


def load(variant: str = "native") -> str:
    """Build (if needed) and load our kernels; returns the torch.ops namespace of their ops.

    ``variant`` (tests only) builds the same source with fewer CPU features, under its own
    namespace (`VARIANTS`), so tests can check that every code path gives the same bits. A
    process loads each variant once (a second library registering the same ops would abort it).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown kernel variant {variant!r}; known: {', '.join(VARIANTS)}")
    return _load(variant)


@cache
def _load(variant: str) -> str:
    if _disabled():
        raise KernelUnavailable(f"native kernels disabled by {DISABLE_ENV_VAR}")
    namespace, extra = VARIANTS[variant]
    library = build_library(SOURCE_DIR, flags(namespace, extra))
    try:
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError) as exc:
        raise KernelUnavailable(f"cannot load {library}: {exc}") from exc
    return namespace


def flags(namespace: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The compiler flags of a build whose ops register in torch.ops.``namespace``."""
    return [*_FLAGS, f"-DSPINSERVE_OPS={namespace}", *extra]


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV_VAR, "") not in ("", "0")


def _compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise KernelUnavailable(f"no C++ compiler ({cxx!r} is not on PATH)")
    return cxx


def _torch_paths() -> tuple[Path, list[str]]:
    """torch's library folder and the include flags of its headers."""
    root = Path(torch.__file__).parent
    includes = (root / "include", root / "include" / "torch" / "csrc" / "api" / "include")
    return root / "lib", [f"-I{p}" for p in includes]


def _compile_command(cxx: str, source: Path, flags: list[str], out: Path) -> list[str]:
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    _, includes = _torch_paths()
    return [
        cxx,
        *flags,
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *includes,
        "-c",
        str(source),
        "-o",
        str(out),
    ]


def _link_command(cxx: str, objects: list[Path], out: Path) -> list[str]:
    torch_lib, _ = _torch_paths()
    return [
        cxx,
        "-shared",
        "-fopenmp",
        *(str(o) for o in objects),
        f"-L{torch_lib}",
        "-lc10",
        "-ltorch_cpu",
        f"-Wl,-rpath,{torch_lib}",
        "-o",
        str(out),
    ]


def _key(cxx: str, folder: Path, flags: list[str]) -> str:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256()
    for path in sorted([*folder.glob("*.cpp"), *folder.glob("*.h")]):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for part in (
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


def build_library(folder: Path, flags: list[str]) -> Path:
    """Every ``.cpp`` of ``folder`` compiled with ``flags`` and linked into one library in the
    cache (built once; see the top of the module); returns its path."""
    cxx = _compiler()
    cache_dir = resolve_cache_dir() / "kernels"
    library = cache_dir / f"spinserve-{_key(cxx, folder, flags)}.so"
    if library.is_file():
        return library
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = open(cache_dir / ".lock", "w")  # noqa: SIM115 (held across the build)
    except OSError as exc:
        raise KernelUnavailable(f"cannot write kernels to {cache_dir}: {exc}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if library.is_file():  # built by another process while we waited
            return library
        log.info("compiling our kernels for this machine (once, ~30 s)")
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            out = Path(tmp) / library.name
            _compile_and_link(cxx, sorted(folder.glob("*.cpp")), flags, out)
            out.replace(library)
    return library


def _compile_and_link(cxx: str, sources: list[Path], flags: list[str], out: Path) -> None:
    """The sources compiled side by side (they are independent; the machine may have 2 cores),
    then linked into ``out``; the first failure raised with the compiler's last lines."""
    objects = [out.parent / f"{source.stem}.o" for source in sources]

    def compile_one(pair: tuple[Path, Path]) -> subprocess.CompletedProcess:
        source, obj = pair
        return subprocess.run(
            _compile_command(cxx, source, flags, obj), capture_output=True, text=True
        )

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(compile_one, zip(sources, objects, strict=True)))
    for source, result in zip(sources, results, strict=True):
        _raise_on_failure(result, f"compiling {source.name}")
    result = subprocess.run(_link_command(cxx, objects, out), capture_output=True, text=True)
    _raise_on_failure(result, "linking our kernels")


def _raise_on_failure(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise KernelUnavailable(f"{what} failed:\n{tail}")

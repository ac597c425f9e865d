"""Datasets and sampling: files in every accepted form, even sampling by category."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from spinserve.bench.datasets import (
    BenchPrompt,
    _json_array_records,
    file_prompts,
    load_prompts,
    sample,
    spec_bench_path,
)
from spinserve.bench.packages import BenchError
from spinserve.config.paths import resolve_cache_dir


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_file_accepts_prompt_messages_and_turns(tmp_path):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "plain", "category": "a", "id": "x"},
            {"messages": messages},
            {"turns": ["first", "second"], "question_id": 7},
        ],
    )
    plain, chat, turns = file_prompts(path)
    assert (plain.prompt_id, plain.category, plain.messages) == (
        "x", "a", ({"role": "user", "content": "plain"},),
    )  # fmt: skip
    assert chat.messages == tuple(messages) and chat.category == "all"
    assert (turns.prompt_id, turns.text) == ("7", "first")


@pytest.mark.parametrize(
    "line, says",
    [
        ("{not json", "p.jsonl:1: not JSON"),
        ('["a list"]', "p.jsonl:1: each line must be a JSON object"),
        ('{"text": "no prompt field"}', "p.jsonl:1: needs a 'prompt'"),
        ('{"messages": [{"role": "user"}]}', "p.jsonl:1: needs a 'prompt'"),
    ],
)
def test_bad_file_lines_are_named(tmp_path, line, says):
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(BenchError, match=says):
        file_prompts(path)


def test_unknown_dataset_names_the_choices(tmp_path):
    with pytest.raises(BenchError, match="not one of spec-bench, humaneval"):
        load_prompts(str(tmp_path / "missing.jsonl"), tmp_path)


def test_sample_is_even_over_categories_and_seeded():
    prompts = [BenchPrompt.user(f"{c}{i}", c, f"{c} {i}") for c in "abc" for i in range(10)]
    prompts += [BenchPrompt.user("d0", "d", "the only d")]
    chosen = sample(prompts, 10, seed=3)
    assert Counter(p.category for p in chosen) == {"a": 3, "b": 3, "c": 3, "d": 1}
    assert sample(prompts, 10, seed=3) == chosen
    assert sample(prompts, 10, seed=4) != chosen
    assert len(sample(prompts, None, seed=0)) == len(prompts)
    with pytest.raises(BenchError, match="the dataset has 31 prompts"):
        sample(prompts, 32, seed=0)


def test_spec_bench_has_its_six_categories():
    prompts = load_prompts("spec-bench", resolve_cache_dir())
    counts = Counter(p.category for p in prompts)
    assert counts == {
        "translation": 54, "summarization": 54, "qa": 54, "math_reasoning": 54, "rag": 54,
        "mt_bench": 56,
    }  # fmt: skip
    assert spec_bench_path(resolve_cache_dir()).name == "question_dev.jsonl"


def test_a_cut_json_array_keeps_the_whole_records():
    text = '[\n {"id": 1, "x": [1, 2]},\n {"id": 2},\n {"id": 3, "x": "cut her'
    assert [r["id"] for r in _json_array_records(text)] == [1, 2]
    assert [r["id"] for r in _json_array_records('[{"id": 1}, {"id": 2}]')] == [1, 2]

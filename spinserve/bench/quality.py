"""`bench quality`: HumanEval pass@1 of an endpoint, greedy.

Each problem's answer becomes a program -- the fenced code block of the answer when there is
one (with the prompt's imports, or after the prompt when the block only continues the
function), else the prompt followed by the answer -- plus the problem's tests and
``check(entry_point)``. It runs in a fresh ``python -I`` subprocess with a wall-clock limit and
an address-space limit, in an empty temporary folder: model-written code never runs in this
process, nor in the server's.
"""

from __future__ import annotations

import dataclasses
import json
import re
import resource
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from spinserve.bench.client import Endpoint, RequestRecord, Sampling
from spinserve.bench.datasets import humaneval_prompts
from spinserve.bench.report import progress_bar, say
from spinserve.bench.runner import Load, run_load

FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
TIME_LIMIT_S = 10.0
MEMORY_LIMIT_BYTES = 2 << 30


@dataclass(frozen=True)
class ProblemResult:
    task_id: str
    passed: bool
    reason: str  # "passed", the failing line of the traceback, "timed out", or the request error
    completion: str


@dataclass(frozen=True)
class QualityResult:
    config: str
    problems: list[ProblemResult]

    @property
    def num_passed(self) -> int:
        return sum(p.passed for p in self.problems)

    @property
    def all_failed_requests(self) -> bool:
        return all(p.reason.startswith("request failed") for p in self.problems)


async def bench_quality(
    endpoint: Endpoint,
    problems: Sequence[dict[str, Any]],
    sampling: Sampling,
    concurrency: int,
    console: Console,
    time_limit_s: float = TIME_LIMIT_S,
) -> QualityResult:
    """Ask ``endpoint`` for every problem, then run each answer against its tests."""
    prompts = humaneval_prompts(list(problems))
    with progress_bar(console) as progress:
        task = progress.add_task("humaneval", total=len(prompts))

        def done(record: RequestRecord) -> None:
            progress.advance(task)
            if record.error:
                say(progress.console, f"{record.prompt_id}: {record.error}")

        (run,) = await run_load([endpoint], prompts, sampling, Load(concurrency), 0, done)
    results = [
        _score(problem, record, time_limit_s)
        for problem, record in zip(problems, run.records, strict=True)
    ]
    return QualityResult(endpoint.name, results)


def _score(problem: dict[str, Any], record: RequestRecord, time_limit_s: float) -> ProblemResult:
    if record.error:
        return ProblemResult(problem["task_id"], False, f"request failed: {record.error}", "")
    passed, reason = run_check(program(problem, record.text), time_limit_s)
    return ProblemResult(problem["task_id"], passed, reason, record.text)


def extract_code(answer: str, entry_point: str) -> str | None:
    """The fenced block that defines ``entry_point``, else the first fenced block, else None.
    An unclosed fence (the answer ran out of tokens) counts up to the end."""
    blocks = FENCE.findall(answer)
    for block in blocks:
        if re.search(rf"^\s*def {re.escape(entry_point)}\s*\(", block, re.MULTILINE):
            return block
    return blocks[0] if blocks else None


def program(problem: dict[str, Any], answer: str) -> str:
    """The script that passes only when the answer solves the problem."""
    entry_point = problem["entry_point"]
    code = extract_code(answer, entry_point)
    if code is None:
        body = problem["prompt"] + answer
    elif re.search(rf"^\s*def {re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        imports = [
            line for line in problem["prompt"].splitlines() if line.startswith(("import ", "from "))
        ]
        body = "\n".join([*imports, code])
    else:
        body = problem["prompt"] + code
    return f"{body}\n\n{problem['test']}\n\ncheck({entry_point})\n"


def run_check(source: str, time_limit_s: float = TIME_LIMIT_S) -> tuple[bool, str]:
    """Run ``source`` in a limited subprocess: (passed, reason)."""
    with tempfile.TemporaryDirectory(prefix="spinserve-humaneval-") as folder:
        script = Path(folder) / "check.py"
        script.write_text(source)
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-B", str(script)],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=time_limit_s,
                preexec_fn=_limit_resources,
                env={"PATH": "/usr/bin:/bin"},
            )
        except subprocess.TimeoutExpired:
            return False, f"timed out after {time_limit_s:g} s"
    if done.returncode == 0:
        return True, "passed"
    lines = done.stderr.strip().splitlines()
    return False, lines[-1][:300] if lines else f"exit status {done.returncode}"


def _limit_resources() -> None:
    """Runs in the child before exec: no more memory than the limit, no core files."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def write_quality(path: Path, settings: dict[str, Any], result: QualityResult) -> None:
    """pass@1 and every problem's outcome and answer."""
    total = len(result.problems)
    out = {
        "settings": settings,
        "config": result.config,
        "num_passed": result.num_passed,
        "num_problems": total,
        "pass_at_1": result.num_passed / total if total else None,
        "problems": [dataclasses.asdict(p) for p in result.problems],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")

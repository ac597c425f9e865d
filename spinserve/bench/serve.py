"""`bench serve`: sample prompts, run every load against every endpoint, report.

    endpoints = [Endpoint("spin", url, model), Endpoint("none", url, model, {"drafter": "none"})]
    result = asyncio.run(bench_serve(ServeOptions(endpoints, prompts, loads=[Load(1)]), console))

Failed requests are printed one line each as they happen and kept in the result with their
error; the run goes on. The caller decides the exit status from `ServeResult.all_failed`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import openai
from rich.console import Console

from spinserve.bench.client import Endpoint, RequestRecord, Sampling, describe
from spinserve.bench.datasets import BenchPrompt
from spinserve.bench.packages import BenchError
from spinserve.bench.report import progress_bar, say
from spinserve.bench.runner import Load, run_load, warm_up
from spinserve.bench.stats import Comparison, Run, Summary, compare, summaries

# Keys of a --compare spec that set the endpoint itself; every other key goes to extra_body.
ENDPOINT_KEYS = ("model", "api_key")


@dataclass(frozen=True)
class ServeOptions:
    endpoints: Sequence[Endpoint]
    prompts: Sequence[BenchPrompt]
    loads: Sequence[Load]
    sampling: Sampling = field(default_factory=Sampling)
    seed: int = 0
    warmup: bool = True


@dataclass(frozen=True)
class ServeResult:
    runs: list[Run]
    summaries: list[Summary]
    comparisons: list[Comparison]

    @property
    def all_failed(self) -> bool:
        return all(not r.ok for run in self.runs for r in run.records)


async def bench_serve(options: ServeOptions, console: Console) -> ServeResult:
    if options.warmup:
        for endpoint in options.endpoints:
            error = await warm_up(endpoint, options.sampling)
            if error:
                say(console, f"{endpoint.name}: warm-up failed: {error}")
    runs: list[Run] = []
    with progress_bar(console) as progress:
        for load in options.loads:
            total = len(options.prompts) * len(options.endpoints)
            task = progress.add_task(load.label, total=total)

            def done(record: RequestRecord, task: Any = task) -> None:
                progress.advance(task)
                if record.error:
                    say(progress.console, _failure_line(record))

            runs += await run_load(
                options.endpoints, options.prompts, options.sampling, load, options.seed, done
            )
    return ServeResult(runs, summaries(runs), compare(runs) if len(options.endpoints) > 1 else [])


def _failure_line(record: RequestRecord) -> str:
    return f"{record.config} {record.load} prompt {record.prompt_id}: {record.error}"


# --- endpoints from flags --------------------------------------------------------------------


def parse_compare(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``NAME=URL[,key=value...]`` -> (name, url, options). Values are JSON when they parse
    (``num_draft_tokens=4`` is a number), else strings (``drafter=none``)."""
    name, sep, rest = spec.partition("=")
    url, *pairs = rest.split(",")
    if not sep or not name or not url:
        raise BenchError(f"--compare {spec!r}: expected NAME=URL[,key=value...]")
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BenchError(f"--compare {spec!r}: {pair!r} is not key=value")
        options[key] = _json_or_text(value)
    return name, url, options


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def make_endpoint(
    name: str, url: str, options: dict[str, Any], model: str | None, api_key: str, extra: dict
) -> Endpoint:
    """An endpoint whose model is ``options["model"]``, else ``model``, else the first the
    server lists; ``extra`` is the --extra-body every endpoint shares."""
    key = str(options.get("api_key", api_key))
    body = {**extra, **{k: v for k, v in options.items() if k not in ENDPOINT_KEYS}}
    chosen = options.get("model") or model or first_model(url, key)
    return Endpoint(name, url, str(chosen), key, body)


def first_model(base_url: str, api_key: str) -> str:
    """The first model of GET /v1/models, or a one-line error saying why there is none."""
    try:
        with openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30) as c:
            models = c.models.list().data
    except Exception as exc:  # any failure means: no model to default to
        raise BenchError(
            f"{base_url}: cannot list models ({describe(exc)}); pass --model"
        ) from None
    if not models:
        raise BenchError(f"{base_url}: GET /models lists no model; pass --model")
    return models[0].id

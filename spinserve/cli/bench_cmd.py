"""`spinserve bench`: measure any OpenAI-compatible endpoint, alone or side by side.

    spinserve bench serve --base-url http://127.0.0.1:8000/v1 --concurrency 1,4 --out r.json
    spinserve bench serve --compare spin=http://127.0.0.1:8000/v1 \\
        none=http://127.0.0.1:8000/v1,drafter=none --num-prompts 24
    spinserve bench quality --dataset humaneval --out humaneval.json

This module parses flags and prints; the work is in `spinserve.bench`, imported only when the
command runs, because its client (``openai``) is the ``bench`` extra, not a dependency.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
from pathlib import Path
from typing import Any

from rich.console import Console

from spinserve.config.paths import resolve_cache_dir
from spinserve.types.errors import SpinserveError

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_NUM_PROMPTS = 30
EXTRA = "pip install 'spinserve[bench]'"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` (``serve`` and ``quality``) to the top-level subparsers."""
    parser = subparsers.add_parser(
        "bench", help="benchmark an OpenAI-compatible endpoint (speed and quality)"
    )
    commands = parser.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    serve = commands.add_parser("serve", help="tokens/s, TTFT and latency under load")
    _add_common(serve, dataset="spec-bench", max_tokens=256, num_prompts=None)
    serve.add_argument("--concurrency", default="1", help="requests in flight; a sweep: 1,4,8")
    serve.add_argument("--request-rate", type=float, help="Poisson arrivals per second instead")
    serve.add_argument(
        "--compare",
        nargs="+",
        metavar="NAME=URL[,key=value]",
        help="several endpoints or configurations, interleaved per prompt; keys model and "
        "api_key set the endpoint, others go to the request body (drafter=none)",
    )
    serve.add_argument("--no-warmup", action="store_true", help="skip one warm-up request each")
    serve.add_argument("--plot", type=Path, help="PNG of tokens/s and latency against the load")
    serve.set_defaults(run=_run_serve)
    quality = commands.add_parser("quality", help="HumanEval pass@1 (greedy)")
    _add_common(quality, dataset="humaneval", max_tokens=512, num_prompts=None)
    quality.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    quality.add_argument("--time-limit", type=float, default=10.0, help="seconds per program")
    quality.set_defaults(run=_run_quality)


def _add_common(
    parser: argparse.ArgumentParser, dataset: str, max_tokens: int, num_prompts: int | None
) -> None:
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="the endpoint's /v1 URL")
    parser.add_argument("--model", help="model name (default: the first of GET /v1/models)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY", "none"),
        help="bearer token (default: $OPENAI_API_KEY)",
    )
    datasets = "humaneval" if dataset == "humaneval" else "spec-bench|humaneval|mt-bench|sharegpt"
    parser.add_argument("--dataset", default=dataset, help=f"{datasets} or FILE (jsonl)")
    every = (
        f"{DEFAULT_NUM_PROMPTS} or the whole dataset if smaller"
        if dataset != "humaneval"
        else "all"
    )
    parser.add_argument(
        "--num-prompts", type=int, default=num_prompts, help=f"sample size (default: {every})"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--extra-body", type=_json_object, default={}, help="JSON for each request")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--out", type=Path, help="JSON with every request")
    parser.add_argument("--cache-dir", help="where datasets are kept (default: spinserve's cache)")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _require(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise SpinserveError(f"spinserve bench needs the {module!r} package: {EXTRA}")


def _sampling(args: argparse.Namespace) -> Any:
    from spinserve.bench.client import Sampling

    return Sampling(args.endpoint, args.max_tokens, args.temperature, args.timeout)


def _endpoints(args: argparse.Namespace) -> list:
    from spinserve.bench.serve import make_endpoint, parse_compare

    specs = [parse_compare(s) for s in getattr(args, "compare", None) or []]
    specs = specs or [("default", args.base_url, {})]
    return [make_endpoint(*s, args.model, args.api_key, args.extra_body) for s in specs]


def _settings(args: argparse.Namespace, endpoints: list) -> dict[str, Any]:
    keep = {k: v for k, v in vars(args).items() if k not in ("run", "api_key", "compare")}
    shown = [{"name": e.name, "base_url": e.base_url, "model": e.model, "extra_body": e.extra_body}
             for e in endpoints]  # fmt: skip
    return {**json.loads(json.dumps(keep, default=str)), "endpoints": shown}


def _run_serve(args: argparse.Namespace) -> int:
    _require("openai", *(["matplotlib"] if args.plot else []))
    from spinserve.bench import report
    from spinserve.bench.datasets import load_prompts, sample
    from spinserve.bench.runner import Load
    from spinserve.bench.serve import ServeOptions, bench_serve

    pool = load_prompts(args.dataset, resolve_cache_dir(args.cache_dir))
    prompts = sample(pool, args.num_prompts or min(DEFAULT_NUM_PROMPTS, len(pool)), args.seed)
    if args.request_rate is not None:
        loads = [Load(rate=args.request_rate)]
    else:
        loads = [Load(concurrency=c) for c in _int_list(args.concurrency)]
    endpoints = _endpoints(args)
    options = ServeOptions(
        endpoints, prompts, loads, _sampling(args), args.seed, warmup=not args.no_warmup
    )
    result = asyncio.run(bench_serve(options, Console(stderr=True)))
    console = _stdout()
    console.print(report.summary_table(result.summaries))
    if result.comparisons:
        console.print(report.comparison_table(result.comparisons))
    if args.out:
        report.write_json(
            args.out, _settings(args, endpoints), result.runs, result.summaries, result.comparisons
        )
    if args.plot:
        report.plot(args.plot, result.summaries)
    return 1 if result.all_failed else 0


def _stdout() -> Console:
    """Tables on stdout, full width when it is a file (rich would cut them to 80 columns)."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SpinserveError(f"--concurrency {text!r}: expected numbers like 1,4,8") from None


def _run_quality(args: argparse.Namespace) -> int:
    _require("openai")
    from spinserve.bench.datasets import HUMANEVAL, humaneval_problems
    from spinserve.bench.quality import bench_quality, write_quality

    if args.dataset != HUMANEVAL:
        raise SpinserveError(f"--dataset {args.dataset!r}: bench quality knows only {HUMANEVAL}")
    problems = humaneval_problems(resolve_cache_dir(args.cache_dir))
    if args.num_prompts is not None:
        if not 0 < args.num_prompts <= len(problems):
            raise SpinserveError(f"--num-prompts: between 1 and {len(problems)}")
        chosen = set(random.Random(args.seed).sample(range(len(problems)), args.num_prompts))
        problems = [p for i, p in enumerate(problems) if i in chosen]
    (endpoint,) = _endpoints(args)
    result = asyncio.run(
        bench_quality(endpoint, problems, _sampling(args), args.concurrency,
                      Console(stderr=True), args.time_limit)
    )  # fmt: skip
    total = len(result.problems)
    print(f"{endpoint.name} {endpoint.model}: pass@1 {result.num_passed}/{total} "
          f"= {100 * result.num_passed / total:.1f}%")  # fmt: skip
    if args.out:
        write_quality(args.out, _settings(args, [endpoint]), result)
    return 1 if result.all_failed_requests else 0

"""`spinserve generate`: run prompts through the engine, streaming text to the terminal.

spinserve generate --chat "Write a function that reverses a string."
spinserve generate --model smollm2-135m-instruct --json --max-tokens 32 "Once upon"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from spinserve.cli.flags import add_engine_flags, add_flags, engine_config_from_flags, from_flags
from spinserve.config.sampling import SamplingParams
from spinserve.engine.builder import build_engine
from spinserve.engine.engine import LLMEngine
from spinserve.engine.outputs import RequestOutput
from spinserve.loading import zoo
from spinserve.loading.loader import load, resolve
from spinserve.speculative.registry import MODEL_FREE


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text for one or more prompts",
        description="Generate text for one or more prompts (several run as one batch).",
    )
    parser.add_argument("prompts", nargs="+", metavar="PROMPT")
    parser.add_argument(
        "--model",
        default=zoo.DEFAULT_TARGET,
        help=f"zoo name, Hugging Face folder or .gguf file (default: {zoo.DEFAULT_TARGET})",
    )
    parser.add_argument("--chat", action="store_true", help="apply the model's chat template")
    parser.add_argument("--json", action="store_true", help="print one JSON object, no stream")
    parser.add_argument("--cache-dir", default=None, help="model cache folder")
    add_flags(parser, SamplingParams)
    add_engine_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    params = from_flags(SamplingParams, args)
    config = engine_config_from_flags(args)
    if config.runtime.num_threads:
        torch.set_num_threads(config.runtime.num_threads)
    err = Console(stderr=True)
    with Progress(console=err, transient=True) as progress:
        loaded = load(args.model, config.runtime, args.cache_dir, progress=progress)
        for name in config.speculative.drafters:  # fetch zoo drafters with progress shown
            if name not in MODEL_FREE:
                resolve(name, args.cache_dir, progress=progress)
    if not args.json:
        err.print(f"[dim]loaded {args.model} in {loaded.load_seconds:.1f} s[/dim]")
    engine = build_engine(loaded, config, cache_dir=args.cache_dir)
    prompts = [_prompt_ids(engine, p, args.chat) for p in args.prompts]
    start = time.perf_counter()
    for ids in prompts:
        engine.add_request(ids, params)
    stream = not args.json and len(prompts) == 1
    finals = _drain(engine, stream)
    wall = time.perf_counter() - start
    if args.json:
        summary = _summary(args, loaded.load_seconds, finals, wall)
        summary["speculation"] = engine.spec_summary()
        summary["selection"] = {"policy": engine.policy.name, "choices": engine.choice_summary()}
        print(json.dumps(summary))
    else:
        _print_results(finals, wall, stream, err)
        _print_speculation(engine, err)
    return 0


def _prompt_ids(engine: LLMEngine, prompt: str, chat: bool) -> list[int]:
    if chat:
        return engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    return engine.tokenizer.encode(prompt)


def _drain(engine: LLMEngine, stream: bool) -> list[RequestOutput]:
    finals: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if stream and out.new_text:
                sys.stdout.write(out.new_text)
                sys.stdout.flush()
            if out.finished:
                finals[out.request_id] = out
    return sorted(finals.values(), key=lambda o: int(o.request_id.rsplit("-", 1)[1]))


def _summary(
    args: argparse.Namespace, load_seconds: float, finals: list[RequestOutput], wall: float
) -> dict[str, Any]:
    num_tokens = sum(len(o.token_ids) for o in finals)
    outputs = [
        {
            "text": o.text,
            "token_ids": o.token_ids,
            "num_tokens": len(o.token_ids),
            "num_prompt_tokens": o.num_prompt_tokens,
            "finish_reason": o.finish_reason,
            "ttft_seconds": (o.first_token_time or o.arrival_time) - o.arrival_time,
            "drafter": o.drafter,
            "speculation": o.spec_stats.to_dict() if o.spec_stats else None,
            "choices": o.choice_counts,
        }
        for o in finals
    ]
    return {
        "model": args.model,
        "text": outputs[0]["text"],
        "token_ids": outputs[0]["token_ids"],
        "num_tokens": num_tokens,
        "wall_seconds": wall,
        "tokens_per_second": num_tokens / wall if wall > 0 else 0.0,
        "load_seconds": load_seconds,
        "outputs": outputs,
    }


def _print_results(finals: list[RequestOutput], wall: float, streamed: bool, err: Console) -> None:
    if streamed:
        sys.stdout.write("\n")
    else:
        for i, out in enumerate(finals):
            print(f"--- prompt {i + 1} ({out.finish_reason})\n{out.text}")
    num_tokens = sum(len(o.token_ids) for o in finals)
    err.print(f"[dim]{num_tokens} tokens in {wall:.2f} s: {num_tokens / wall:.1f} tokens/s[/dim]")


def _print_speculation(engine: LLMEngine, err: Console) -> None:
    choices = engine.choice_summary()
    if choices:
        shown = ", ".join(f"{label} {n}" for label, n in choices.items())
        err.print(f"[dim]policy {engine.policy.name}: steps per choice: {shown}[/dim]")
    for name, stats in engine.drafter_stats.items():
        if stats.num_draft_steps:
            err.print(
                f"[dim]drafter {name}: {stats.num_draft_steps} draft steps, acceptance "
                f"{stats.acceptance_rate:.0%}, mean accepted length "
                f"{stats.mean_accepted_length:.2f}, drafting {stats.draft_seconds:.2f} s[/dim]"
            )

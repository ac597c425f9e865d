"""Greedy agreement of the fast CPU forms with the fp32-dequantized reference.

Reproduce (from the repository root; ~10 minutes for the Qwen 1.5B on the 2-core machine)::

    .venv/bin/python benchmarks/quant_agreement.py --model qwen2.5-coder-1.5b-instruct \\
        --per-category 3 --max-tokens 64 --forms auto int4 llamacpp \\
        --out results/quant_agreement.json

Every form computes over the same GGUF weights (``float32``: every linear weight dequantized to
fp32, the reference; ``auto``: k-quant blocks on our kernel with int8-rounded activations;
``int4``: 4-bit blocks on torch's int4 kernel, other quantized weights in bf16, bf16
activations into the matmuls; ``llamacpp``: llama.cpp's own kernels on the GGUF, greedy on its
logits, one prompt at a time: the bar for what the format's usual implementation computes;
``auto-kv16``: ``auto`` with the keys and values kept in float16, `--kv-cache-dtype float16`).
The prompts are ``--per-category`` of each Spec-Bench dev category and HumanEval
(`spec_prompts`, 7 categories: 3 per category gives 21), chat-templated; each form decodes
them greedily (ours: all prompts in one batch), ``--max-tokens`` new tokens, EOS ignored so
every continuation has the same length. Reported per form and prompt: the tokens generated
before the first divergence from the reference; per form: their share of all tokens, and how
many prompts agree entirely. After a divergence the two continuations condition on different
text, so only the prefix says anything about the arithmetic.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from spec_bench import SPEC_BENCH
from spec_prompts import sample_prompts
from step_bench import log

from spinserve.config.engine import EngineConfig, RuntimeConfig
from spinserve.config.sampling import SamplingParams
from spinserve.engine.builder import build_engine
from spinserve.loading import loader, zoo

REPO_ROOT = Path(__file__).resolve().parents[1]


def runtime_of(form: str) -> RuntimeConfig:
    """``form``: a weight form, or one with ``-kv16`` (the same with a float16 KV cache)."""
    weights, _, kv = form.partition("-")
    if kv not in ("", "kv16"):
        raise ValueError(f"unknown form {form!r}: a weight form, FORM-kv16 or llamacpp")
    return RuntimeConfig(weights=weights, kv_cache_dtype="float16" if kv == "kv16" else "auto")


def generate(name: str, form: str, prompts: list[str], max_tokens: int) -> list[list[int]]:
    runtime = runtime_of(form)
    loaded = loader.load(name, runtime, fetch_missing=False)
    engine = build_engine(loaded, EngineConfig(runtime=runtime))
    chat = loaded.tokenizer.apply_chat_template
    ids = [chat([{"role": "user", "content": p}]) for p in prompts]
    start = time.perf_counter()
    outs = engine.generate(ids, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    log(
        f"{name}/{form}: {len(ids)} prompts x {max_tokens} tokens in "
        f"{time.perf_counter() - start:.0f} s"
    )
    return [o.token_ids for o in outs]


def generate_llamacpp(
    name: str, prompts: list[str], max_tokens: int, threads: int
) -> list[list[int]]:
    """Greedy continuations from llama.cpp (llama-cpp-python) of the same chat-templated ids."""
    from llamacpp_step import LlamaCppStep

    from spinserve.loading.tokenizer import Tokenizer

    folder = loader.resolve(name, fetch_missing=False)
    chat = Tokenizer.from_folder(folder).apply_chat_template
    ids = [chat([{"role": "user", "content": p}]) for p in prompts]
    step = LlamaCppStep(
        zoo.gguf_path(name, zoo.resolve_cache_dir()), threads, 1, max(map(len, ids)) + max_tokens
    )
    outs = []
    start = time.perf_counter()
    try:
        for prompt in ids:
            step.roll_back(1, 0)
            step.prefill([prompt[:-1]])
            token, pos, out = prompt[-1], len(prompt) - 1, []
            for _ in range(max_tokens):
                token = int(step.decode([(token, pos, 0, True)])[0].argmax())
                out.append(token)
                pos += 1
            outs.append(out)
    finally:
        step.close()
    log(
        f"{name}/llamacpp: {len(ids)} prompts x {max_tokens} tokens in "
        f"{time.perf_counter() - start:.0f} s"
    )
    return outs


def agreed(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=zoo.DEFAULT_TARGET)
    p.add_argument("--per-category", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--forms",
        nargs="+",
        default=["auto"],
        help="weight forms to compare (auto, int4, ...; FORM-kv16: with a float16 KV cache; "
        "llamacpp)",
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "quant_agreement.json")
    args = p.parse_args()
    for form in args.forms:  # a bad form fails now, not after the fp32 reference's run
        try:
            if form != "llamacpp":
                runtime_of(form)
        except ValueError as e:
            p.error(str(e))
    torch.set_num_threads(args.threads)
    prompts = sample_prompts(SPEC_BENCH, zoo.resolve_cache_dir(), args.per_category, args.seed)
    texts = [q.text for q in prompts]
    ref = generate(args.model, "float32", texts, args.max_tokens)
    report = {}
    for form in args.forms:
        if form == "llamacpp":
            fast = generate_llamacpp(args.model, texts, args.max_tokens, args.threads)
        else:
            fast = generate(args.model, form, texts, args.max_tokens)
        rows = [
            {"category": q.category, "prompt_id": q.prompt_id, "agreed_tokens": agreed(r, f)}
            for q, r, f in zip(prompts, ref, fast, strict=True)
        ]
        total = sum(r["agreed_tokens"] for r in rows)
        summary = {
            "model": args.model,
            "weights": form,
            "prompts": len(rows),
            "max_tokens": args.max_tokens,
            "share_before_first_divergence": total / (len(rows) * args.max_tokens),
            "prompts_fully_equal": sum(r["agreed_tokens"] == args.max_tokens for r in rows),
        }
        report[form] = {"summary": summary, "prompts": rows}
        print(json.dumps(summary, indent=2))
        for r in rows:
            agreed_tokens = f"{r['agreed_tokens']:>4}/{args.max_tokens}"
            print(f"{r['category']:<16} {r['prompt_id']:<14} {agreed_tokens}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

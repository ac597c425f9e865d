"""Command-line flags derived from the config dataclasses.

Each field of a config dataclass becomes ``--field-name`` with the field's type and default,
so the CLI and the configs cannot drift apart. Help texts live here, beside the flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

from spinserve.config.engine import CacheConfig, EngineConfig, RuntimeConfig, SchedulerConfig
from spinserve.config.selection import SelectionConfig
from spinserve.config.speculative import SpeculativeConfig

T = TypeVar("T")

HELP = {
    "max_tokens": "most tokens to generate",
    "temperature": "sampling temperature; 0 is greedy",
    "top_p": "nucleus sampling: keep the smallest set of tokens with this much mass",
    "top_k": "keep only the k most likely tokens (0: off)",
    "seed": "random seed of a sampled request (same output alone or in a batch)",
    "stop": "stop before this string (repeatable)",
    "ignore_eos": "keep generating past end-of-sequence tokens",
    "stop_token_ids": "also stop at this token id (repeatable)",
    "max_num_seqs": "most requests running at once",
    "max_num_batched_tokens": "most tokens in one forward (long prompts are prefilled in chunks)",
    "max_model_len": "context length cap (default: the model's)",
    "block_size": "tokens per KV cache block",
    "kv_cache_gib": "KV cache pool size in GiB",
    "prefix_caching": "keep full KV blocks after their request and reuse them for every "
    "prompt that starts the same (earlier turns, shared documents); outputs are identical "
    "either way",
    "dtype": "compute dtype of the model",
    "weights": "form of the target's linear weights: auto (GGUF blocks as they are on our "
    "kernels: Q4_K, Q6_K, Q8_0, Q5_0, Q4_0, Q4_1; other formats bfloat16; models without a "
    "GGUF as stored), int4 (4-bit blocks on torch's int4 kernel, "
    "the rest bfloat16), int8 (auto with the rest re-quantized to int8: not exact), "
    "bfloat16, float32 (the reference)",
    "drafter_weights": "form of model drafters' linear weights (as --weights); int8 by "
    "default: a drafter's numerics change only its acceptance, never the output",
    "kv_cache_dtype": "the target's cached keys and values: auto (the compute dtype; float32 "
    "is exact) or float16 (half the memory, and half the bytes attention reads; the keys and "
    "values rounded to float16, as llama.cpp keeps them by default)",
    "num_threads": "CPU threads for torch (0: torch's default)",
    "num_draft_tokens": "draft tokens per step (k) of a drafter; 0 turns speculation off",
    "drafter_kv_cache_gib": "KV cache pool of each model drafter, in GiB",
    "draft_timeout_s": "seconds a drafter's call may take before its drafts are given up for "
    "the step (generous: a model drafter's first call catches up on the whole prompt)",
    "drafter_kv_cache_dtype": "model drafters' cached keys and values: float16 (half the "
    "memory and the bytes a drafting step reads; a drafter's numerics change only its "
    "acceptance, never the output) or auto (their compute dtype)",
    "policy": "drafter selection: spin (learns per request), fixed:NAME, random, "
    "round-robin, oracle",
    "draft_lengths": "the k the spin policy may choose among (repeatable; default 1,2,3,4)",
    "policy_seed": "seed of the random and spin policies",
    "step_gate": "spin: each step, play the lookup draft (n-gram, suffix) and length its "
    "predicted pass chances say pays, or none, learning from every lookup's draft "
    "(experimental: measured, it does not pay yet)",
    "oracle_table": "JSON file of per-request choices for the oracle policy",
}


def _flag_type(annotation: Any) -> tuple[type, bool]:
    """(element type, repeatable) of a field annotation such as ``int | None``."""
    hint = annotation
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def add_flags(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        kind, repeatable = _flag_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = HELP.get(f.name, "")
        if kind is bool:  # a switch; one that is on by default also gets --no-NAME
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            group.add_argument(flag, action=action, default=f.default, help=help_text)
        elif repeatable:
            group.add_argument(flag, action="append", type=kind, default=None, help=help_text)
        else:
            default = f.default
            shown = f" (default: {default})" if default is not None else ""
            group.add_argument(flag, type=kind, default=default, help=help_text + shown)


def from_flags(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from the parsed flags; config validation raises ValueError."""
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:  # None keeps the dataclass default
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def drafter_names(given: list[str] | None, model: str) -> list[str]:
    """The ``--drafter`` flags as a list: not given -> the model's default set
    (`spinserve.loading.zoo.default_drafters`); ``--drafter none`` alone -> no speculation.

    >>> drafter_names(["none"], "smollm2-135m-instruct"), drafter_names(None, "./x.gguf")
    ([], ['ngram', 'suffix'])
    """
    from spinserve.config.speculative import NO_DRAFTER
    from spinserve.loading.zoo import default_drafters

    if given is None:
        return list(default_drafters(model))
    if NO_DRAFTER in given:
        if len(given) > 1:
            raise ValueError(f"--drafter {NO_DRAFTER} turns speculation off; give it alone")
        return []
    return list(given)


# The config dataclasses behind an engine, in the order their flag groups are shown.
ENGINE_CONFIGS = (SchedulerConfig, CacheConfig, RuntimeConfig, SpeculativeConfig, SelectionConfig)
DRAFTER_HELP = (
    "drafter: ngram, suffix, or a model name/path (same tokenizer or not: detected); "
    "repeatable: the set the selection policy (--policy) chooses from for requests that name "
    "no drafter; default: the model's own set (Qwen2.5-Coder-1.5B: its 0.5B, SmolLM2, ngram, "
    "suffix; any other model: ngram, suffix); 'none' turns speculation off"
)


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of every engine config, plus the repeatable ``--drafter``."""
    for cls in ENGINE_CONFIGS:
        add_flags(parser, cls, exclude=("drafters",))
    parser.add_argument(
        "--drafter", dest="drafters", action="append", metavar="NAME", help=DRAFTER_HELP
    )


def engine_config_from_flags(args: argparse.Namespace) -> EngineConfig:
    """The `EngineConfig` the flags describe; ``args.model`` picks the default drafters."""
    args = argparse.Namespace(**vars(args))
    args.drafters = drafter_names(args.drafters, args.model)
    return EngineConfig(
        scheduler=from_flags(SchedulerConfig, args),
        cache=from_flags(CacheConfig, args),
        runtime=from_flags(RuntimeConfig, args),
        speculative=from_flags(SpeculativeConfig, args),
        selection=from_flags(SelectionConfig, args),
    )

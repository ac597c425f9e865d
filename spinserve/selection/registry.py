"""Policies by name, and the config that names one.

    fixed:NAME    NAME (a loaded drafter, or ``none``) for every request, with the configured k
    random        a uniformly random drafter every step
    round-robin   each new request the next drafter, kept to its end
    spin          the learning policy (`spin`): drafter and k per request and step
    oracle        measurement only: per-request choices from ``oracle_table`` (a JSON file
                  written by `OraclePolicy.save`)

With no drafter loaded there is nothing to choose: every policy but ``oracle`` and
``fixed:NAME`` (which name something) becomes ``fixed:none``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from spinserve.config.speculative import MAX_DRAFT_TOKENS, NO_DRAFTER
from spinserve.selection.baselines import (
    FixedPolicy,
    OraclePolicy,
    RandomPolicy,
    RoundRobinPolicy,
)
from spinserve.selection.policy import NO_SPECULATION, Choice, SelectionPolicy
from spinserve.selection.spin import SpinParams, SpinPolicy

DEFAULT_POLICY = "spin"


@dataclass(frozen=True)
class SelectionConfig:
    """How requests get their drafter. ``policy``: a name above. ``draft_lengths``: the k
    `spin` may choose among (empty: 1, 2, 3, 4, 6, 8). ``policy_seed``: seeds the random
    choices of ``random`` and ``spin``. ``oracle_table``: the file ``oracle`` reads."""

    policy: str = DEFAULT_POLICY
    draft_lengths: tuple[int, ...] = ()
    policy_seed: int = 0
    oracle_table: str | None = None

    def __post_init__(self) -> None:
        kind, arg = parse_policy(self.policy)
        if kind == "oracle" and not self.oracle_table:
            raise ValueError("policy 'oracle' needs oracle_table (see OraclePolicy.save)")
        bad = [k for k in self.draft_lengths if not 1 <= k <= MAX_DRAFT_TOKENS]
        if bad:
            raise ValueError(f"draft_lengths must be in [1, {MAX_DRAFT_TOKENS}], got {bad}")


@dataclass(frozen=True)
class _Context:
    arg: str | None
    config: SelectionConfig
    drafters: tuple[str, ...]
    num_draft_tokens: int

    def arms(self) -> list[Choice]:
        """Every loaded drafter with the configured k."""
        return [Choice(d, self.num_draft_tokens) for d in self.drafters]


def _fixed(ctx: _Context) -> SelectionPolicy:
    name = ctx.arg
    if name == NO_DRAFTER:
        return FixedPolicy(NO_SPECULATION)
    if name not in ctx.drafters:
        loaded = ", ".join(ctx.drafters) or "none"
        raise ValueError(f"policy fixed:{name}: no such drafter loaded ({loaded}, or none)")
    return FixedPolicy(Choice(name, ctx.num_draft_tokens))


def _spin(ctx: _Context) -> SelectionPolicy:
    params = SpinParams(seed=ctx.config.policy_seed)
    if ctx.config.draft_lengths:
        params = SpinParams(draft_lengths=ctx.config.draft_lengths, seed=ctx.config.policy_seed)
    return SpinPolicy(ctx.drafters, params)


def _oracle(ctx: _Context) -> SelectionPolicy:
    return OraclePolicy.load(ctx.config.oracle_table)  # type: ignore[arg-type]


POLICIES: Mapping[str, Callable[[_Context], SelectionPolicy]] = MappingProxyType(
    {
        "fixed": _fixed,
        "random": lambda ctx: RandomPolicy(ctx.arms(), ctx.config.policy_seed),
        "round-robin": lambda ctx: RoundRobinPolicy(ctx.arms()),
        "spin": _spin,
        "oracle": _oracle,
    }
)
TAKES_ARG = frozenset({"fixed"})
NEEDS_DRAFTERS = frozenset({"random", "round-robin", "spin"})


def parse_policy(name: str) -> tuple[str, str | None]:
    """``"fixed:ngram"`` -> ``("fixed", "ngram")``; ``"spin"`` -> ``("spin", None)``.

    >>> parse_policy("fixed:qwen2.5-coder-0.5b-instruct"), parse_policy("round-robin")
    (('fixed', 'qwen2.5-coder-0.5b-instruct'), ('round-robin', None))
    """
    kind, sep, arg = name.partition(":")
    if kind not in POLICIES:
        others = ", ".join(k for k in POLICIES if k not in TAKES_ARG)
        raise ValueError(f"unknown policy {name!r}; policies: fixed:NAME, {others}")
    if kind in TAKES_ARG and not arg:
        raise ValueError(f"policy {kind!r} needs a drafter: {kind}:NAME (or {kind}:none)")
    if kind not in TAKES_ARG and sep:
        raise ValueError(f"policy {kind!r} takes no argument, got {name!r}")
    return kind, arg or None


def build_policy(
    config: SelectionConfig, drafters: Sequence[str], num_draft_tokens: int
) -> SelectionPolicy:
    """The policy ``config`` names, over the loaded ``drafters``; ``num_draft_tokens`` is the
    k of the fixed, random and round-robin policies (0: they never speculate)."""
    kind, arg = parse_policy(config.policy)
    if not 0 <= num_draft_tokens <= MAX_DRAFT_TOKENS:
        raise ValueError(f"num_draft_tokens must be in [0, {MAX_DRAFT_TOKENS}]")
    if kind in NEEDS_DRAFTERS and (not drafters or num_draft_tokens == 0 and kind != "spin"):
        return FixedPolicy(NO_SPECULATION)
    if kind == "fixed" and arg != NO_DRAFTER and num_draft_tokens == 0:
        raise ValueError(f"policy fixed:{arg} with num_draft_tokens = 0 never drafts")
    return POLICIES[kind](_Context(arg, config, tuple(drafters), num_draft_tokens))

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

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from spinserve.config.selection import (  # noqa: F401 (re-exported: the policies' names)
    DEFAULT_POLICY,
    POLICY_KINDS,
    TAKES_ARG,
    SelectionConfig,
    SpinParams,
    parse_policy,
)
from spinserve.config.speculative import NO_DRAFTER, check_draft_lengths, unknown_drafter
from spinserve.selection.baselines import (
    FixedPolicy,
    OraclePolicy,
    RandomPolicy,
    RoundRobinPolicy,
)
from spinserve.selection.policy import NO_SPECULATION, Choice, SelectionPolicy
from spinserve.selection.spin import SpinPolicy


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
    if (why := unknown_drafter(name, ctx.drafters)) is not None:  # type: ignore[arg-type]
        raise ValueError(f"policy fixed:{name}: {why}")
    if name == NO_DRAFTER:
        return FixedPolicy(NO_SPECULATION)
    return FixedPolicy(Choice(name, ctx.num_draft_tokens))


def _spin(ctx: _Context) -> SelectionPolicy:
    params = SpinParams(seed=ctx.config.policy_seed, step_gate=ctx.config.step_gate)
    if ctx.config.draft_lengths:
        params = dataclasses.replace(params, draft_lengths=ctx.config.draft_lengths)
    return SpinPolicy(ctx.drafters, params)


def _oracle(ctx: _Context) -> SelectionPolicy:
    # A request the table does not name (a warm-up, a late arrival) is not speculated on: a
    # step must never fail over a measurement-only policy's missing entry.
    return OraclePolicy.load(ctx.config.oracle_table, fallback=NO_SPECULATION)  # type: ignore[arg-type]


POLICIES: Mapping[str, Callable[[_Context], SelectionPolicy]] = MappingProxyType(
    {
        "fixed": _fixed,
        "random": lambda ctx: RandomPolicy(ctx.arms(), ctx.config.policy_seed),
        "round-robin": lambda ctx: RoundRobinPolicy(ctx.arms()),
        "spin": _spin,
        "oracle": _oracle,
    }
)
assert set(POLICIES) == set(POLICY_KINDS), "config.selection.POLICY_KINDS is out of date"
NEEDS_DRAFTERS = frozenset({"random", "round-robin", "spin"})


def build_policy(
    config: SelectionConfig, drafters: Sequence[str], num_draft_tokens: int
) -> SelectionPolicy:
    """The policy ``config`` names, over the loaded ``drafters``; ``num_draft_tokens`` is the
    k of the fixed, random and round-robin policies (0: they never speculate)."""
    kind, arg = parse_policy(config.policy)
    check_draft_lengths("num_draft_tokens", [num_draft_tokens])
    nothing_to_draft = not drafters or (num_draft_tokens == 0 and kind != "spin")
    if kind in NEEDS_DRAFTERS and nothing_to_draft:
        return FixedPolicy(NO_SPECULATION)
    if kind == "fixed" and arg != NO_DRAFTER and num_draft_tokens == 0:
        raise ValueError(f"policy fixed:{arg} with num_draft_tokens = 0 never drafts")
    return POLICIES[kind](_Context(arg, config, tuple(drafters), num_draft_tokens))

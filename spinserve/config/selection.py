"""How requests get their drafter: the selection policy's name and settings, and the knobs of
the learning policy `spin` (`SpinParams`).

The policies themselves live in `spinserve.selection`; this module only names and validates
them, so the engine config can hold a `SelectionConfig` without importing the policies.
"""

from __future__ import annotations

from dataclasses import dataclass

from spinserve.config.speculative import check_draft_lengths

POLICY_KINDS = ("fixed", "random", "round-robin", "spin", "oracle")
TAKES_ARG = frozenset({"fixed"})

DEFAULT_POLICY = "spin"


@dataclass(frozen=True)
class SelectionConfig:
    """How requests get their drafter. ``policy``: a name above. ``draft_lengths``: the k
    `spin` may choose among (empty: 1, 2, 3, 4). ``policy_seed``: seeds the random
    choices of ``random`` and ``spin``. ``oracle_table``: the file ``oracle`` reads.
    ``step_gate``: `spin` picks the lookup draft and its length per step from predicted pass
    chances (`spinserve.selection.step_gate`); off (the default: measured, it does not pay
    yet, docs/design.md), the request's rates alone choose."""

    policy: str = DEFAULT_POLICY
    draft_lengths: tuple[int, ...] = ()
    policy_seed: int = 0
    oracle_table: str | None = None
    step_gate: bool = False

    def __post_init__(self) -> None:
        kind, _ = parse_policy(self.policy)
        if kind == "oracle" and not self.oracle_table:
            raise ValueError("policy 'oracle' needs oracle_table (see OraclePolicy.save)")
        if self.draft_lengths:
            check_draft_lengths("draft_lengths", self.draft_lengths, minimum=1)


def parse_policy(name: str) -> tuple[str, str | None]:
    """``"fixed:ngram"`` -> ``("fixed", "ngram")``; ``"spin"`` -> ``("spin", None)``.

    >>> parse_policy("fixed:qwen2.5-coder-0.5b-instruct"), parse_policy("round-robin")
    (('fixed', 'qwen2.5-coder-0.5b-instruct'), ('round-robin', None))
    """
    kind, sep, arg = name.partition(":")
    if kind not in POLICY_KINDS:
        others = ", ".join(k for k in POLICY_KINDS if k not in TAKES_ARG)
        raise ValueError(f"unknown policy {name!r}; policies: fixed:NAME, {others}")
    if kind in TAKES_ARG and not arg:
        raise ValueError(f"policy {kind!r} needs a drafter: {kind}:NAME (or {kind}:none)")
    if kind not in TAKES_ARG and sep:
        raise ValueError(f"policy {kind!r} takes no argument, got {name!r}")
    return kind, arg or None


@dataclass(frozen=True)
class SpinParams:
    """The knobs of `spin`; the defaults are what the simulator chose, except where said.

    - ``draft_lengths``: the k a step may ask for. Up to 4: on the 2-core CPU a 9-token
      forward costs 3-4 decodes, and the acceptance model (a rate for every later token)
      overrates long lookup drafts, whose copies pass or fail as a whole; replaying real
      drafts chose (1, 2, 3, 4) over adding 6 and 8 (docs/design.md, "Drafter selection").
      Where verification is nearly free (a GPU) longer drafts pay: pass them.
    - ``exploration``: Thompson sampling draws from the beliefs with their spread times
      this (0.35: what replaying real drafts chose).
    - ``discount``: weight per step of a request's older observations (1: keep all).
    - ``change_threshold``: CUSUM level at which a request's statistics restart because its
      text changed (0: off).
    - ``max_prior_weight``, ``prior_memory``: the prior learned from finished requests is
      worth at most this many of a request's own observations, and remembers about this
      many requests.
    - ``output_tokens``: a request's expected output length before any has finished (the
      horizon a drafter's catch-up is shared over).
    - ``seed``: of the Thompson draws.
    - ``step_gate``: per step, the lookup draft and length to play come from the drafts'
      predicted pass chances (`spinserve.selection.step_gate`), not from the rates alone
      (off by default: side by side it did not pay, docs/design.md).

    The alternatives these were measured against (other exploration rules, every drafter x k
    its own arm, streaks, a cap after a rejection, exploring under load, no shared prior) are
    parameters of ``research/selection/variants.py``, not of the product.
    """

    draft_lengths: tuple[int, ...] = (1, 2, 3, 4)
    exploration: float = 0.35
    discount: float = 0.99
    max_prior_weight: float = 4.0
    prior_memory: float = 200.0
    change_threshold: float = 6.5
    output_tokens: float = 64.0
    seed: int = 0
    step_gate: bool = False

    def __post_init__(self) -> None:
        lengths = self.draft_lengths
        check_draft_lengths("draft_lengths", lengths, minimum=1)
        if self.exploration < 0:
            raise ValueError(f"exploration must be >= 0, got {self.exploration}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if self.change_threshold < 0:
            raise ValueError(f"change_threshold must be >= 0, got {self.change_threshold}")
        if self.output_tokens < 1:
            raise ValueError(f"output_tokens must be >= 1, got {self.output_tokens}")

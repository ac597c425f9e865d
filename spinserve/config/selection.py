"""How requests get their drafter: the selection policy's name and settings.

The policies themselves live in `spinserve.selection`; this module only names and validates
them, so the engine config can hold a `SelectionConfig` without importing the policies.
"""

from __future__ import annotations

from dataclasses import dataclass

from spinserve.config.speculative import MAX_DRAFT_TOKENS

POLICY_KINDS = ("fixed", "random", "round-robin", "spin", "oracle")
TAKES_ARG = frozenset({"fixed"})

DEFAULT_POLICY = "spin"


@dataclass(frozen=True)
class SelectionConfig:
    """How requests get their drafter. ``policy``: a name above. ``draft_lengths``: the k
    `spin` may choose among (empty: 1, 2, 3, 4). ``policy_seed``: seeds the random
    choices of ``random`` and ``spin``. ``oracle_table``: the file ``oracle`` reads."""

    policy: str = DEFAULT_POLICY
    draft_lengths: tuple[int, ...] = ()
    policy_seed: int = 0
    oracle_table: str | None = None

    def __post_init__(self) -> None:
        kind, _ = parse_policy(self.policy)
        if kind == "oracle" and not self.oracle_table:
            raise ValueError("policy 'oracle' needs oracle_table (see OraclePolicy.save)")
        bad = [k for k in self.draft_lengths if not 1 <= k <= MAX_DRAFT_TOKENS]
        if bad:
            raise ValueError(f"draft_lengths must be in [1, {MAX_DRAFT_TOKENS}], got {bad}")


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

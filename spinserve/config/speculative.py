"""Speculative decoding settings: engine-wide defaults and per-request overrides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spinserve.config.model import KV_CACHE_DTYPES

NO_DRAFTER = "none"  # a request that asks for this drafter does not speculate
MAX_DRAFT_TOKENS = 16


def check_draft_lengths(name: str, lengths: Sequence[int], minimum: int = 0) -> None:
    """The one check of draft lengths: integers in [minimum, MAX_DRAFT_TOKENS].

    >>> check_draft_lengths("draft_lengths", (1, 0), minimum=1)
    Traceback (most recent call last):
    ValueError: draft_lengths must be in [1, 16], got [0]
    """
    bad = [k for k in lengths if not (isinstance(k, int) and minimum <= k <= MAX_DRAFT_TOKENS)]
    if bad or not lengths:
        raise ValueError(f"{name} must be in [{minimum}, {MAX_DRAFT_TOKENS}], got {bad or lengths}")


@dataclass(frozen=True)
class SpeculativeConfig:
    """Which drafters the engine loads, and the defaults requests inherit.

    ``drafters``: names understood by `spinserve.speculative.registry` (``ngram``, ``suffix``, a zoo
    model name, a Hugging Face folder or a .gguf file). The first is the default drafter of
    a request that names none. Empty: no speculation.
    ``drafter_kv_cache_dtype``: model drafters' cached keys and values, ``float16`` by default
    (half the memory and the bytes a drafting step reads; a drafter's numerics change only
    its acceptance, never the output) or ``auto`` (their compute dtype).
    ``draft_timeout_s``: a drafter's call that takes longer is given up for the step (its
    requests go on without drafts); generous, since a model drafter's first call on a long
    prompt catches up on all of it.
    """

    drafters: tuple[str, ...] = ()
    num_draft_tokens: int = 4
    drafter_kv_cache_gib: float = 0.5
    drafter_kv_cache_dtype: str = "float16"
    draft_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_draft_lengths("num_draft_tokens", [self.num_draft_tokens])
        if len(set(self.drafters)) != len(self.drafters):
            raise ValueError(f"drafters listed twice: {list(self.drafters)}")
        if NO_DRAFTER in self.drafters:
            raise ValueError(f"{NO_DRAFTER!r} is not a drafter; leave drafters empty instead")
        if not self.draft_timeout_s > 0:
            raise ValueError(f"draft_timeout_s must be positive, got {self.draft_timeout_s}")
        if self.drafter_kv_cache_gib <= 0:
            raise ValueError("drafter_kv_cache_gib must be positive")
        if self.drafter_kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"drafter_kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                f"got {self.drafter_kv_cache_dtype!r}"
            )


def unknown_drafter(name: str, loaded: Sequence[str]) -> str | None:
    """Why ``name`` names no drafter (neither a loaded one nor `NO_DRAFTER`), or None: the one
    check of a drafter name, for requests and for the server's settings alike."""
    if name == NO_DRAFTER or name in loaded:
        return None
    return (
        f"unknown drafter {name!r}; loaded drafters: {', '.join(loaded) or 'none'} "
        f'(or "{NO_DRAFTER}" for no speculation)'
    )


@dataclass(frozen=True)
class SpecParams:
    """One request's speculation: which drafter (None: the selection policy chooses, step by
    step; `NO_DRAFTER`: no speculation) and how many draft tokens per step (None: the
    engine's default; 0: no speculation; more needs a named drafter)."""

    drafter: str | None = None
    num_draft_tokens: int | None = None

    def __post_init__(self) -> None:
        k = self.num_draft_tokens
        if k is not None:
            check_draft_lengths("num_draft_tokens", [k])

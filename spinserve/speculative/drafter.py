"""The drafter protocol and the name -> drafter registry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from spinserve.config.sampling import SamplingParams


@dataclass(frozen=True)
class DraftRequest:
    """Ask for up to ``num_draft_tokens`` tokens to follow ``token_ids``.

    ``token_ids`` is the request's committed sequence (prompt + accepted output). A stateful
    drafter compares it with what it saw last time to roll back its rejected tokens and catch
    up on the accepted ones; nothing else tells it what the target accepted.
    """

    request_id: str
    token_ids: Sequence[int]
    num_draft_tokens: int
    params: SamplingParams


@dataclass(frozen=True)
class Draft:
    """Proposed tokens (possibly fewer than asked, even none) in the target's vocabulary.

    ``probs`` [len(token_ids), target_vocab]: the distribution each token was drawn from, when
    the drafter has one over the target's vocabulary; None means the tokens are deterministic
    proposals (a point mass), which verification handles exactly as well.
    ``scores``: the drafter's own belief, per token, that the draft holds up to and including
    that token, in [0, 1] (suffix: the counts' path probability; n-gram: the matched length
    over the longest it tries); None when it has none. Selection reads them to predict which
    drafts will pass; verification never does.
    """

    token_ids: list[int]
    probs: torch.Tensor | None = None
    scores: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return len(self.token_ids)


class Drafter(Protocol):
    """Proposes draft tokens for a batch of requests in one call.

    ``is_lookup``: drafts are a lookup in text already seen (n-gram, suffix), so cheap that
    the engine asks for them every step to learn from, whether they are played or not.
    """

    name: str
    is_lookup: bool

    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        """One `Draft` per request, in order."""
        ...

    def finish(self, request_id: str, token_ids: Sequence[int]) -> None:
        """The request ended with ``token_ids`` (prompt + output): drop or learn from it."""
        ...

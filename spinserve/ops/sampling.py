"""Turning logits into tokens: temperature, top-k, top-p, and seeded draws.

`probabilities` gives the exact distribution a request samples from, so speculative
verification can compare target and drafter under the same filters.
"""

from __future__ import annotations

import torch


def probabilities(
    logits: torch.Tensor,  # [num_rows, vocab]
    temperature: torch.Tensor,  # [num_rows] float, > 0
    top_k: torch.Tensor,  # [num_rows] int64, 0 = off
    top_p: torch.Tensor,  # [num_rows] float, 1 = off
) -> torch.Tensor:
    """[num_rows, vocab] fp32 probabilities after temperature, top-k and top-p.

    top-k keeps the k largest logits; top-p then keeps the smallest prefix of the remaining
    tokens, by falling probability, whose mass reaches p (always at least one token).
    """
    logits = logits.float() / temperature[:, None]
    if bool((top_k > 0).any()) or bool((top_p < 1).any()):
        logits = _filter_top_k_top_p(logits, top_k, top_p)
    return torch.softmax(logits, dim=-1)


def _filter_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [R, V]
    rank = torch.arange(vocab)[None, :]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab)[:, None]
    sorted_logits = sorted_logits.masked_fill(rank >= k, float("-inf"))
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop = (mass_before >= top_p[:, None]) & (rank > 0) & (top_p[:, None] < 1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """[num_rows] argmax token ids of ``logits`` [num_rows, vocab]."""
    return logits.argmax(dim=-1)


def draw(
    probs: torch.Tensor,  # [num_rows, vocab]
    generators: list[torch.Generator],
) -> torch.Tensor:
    """[num_rows] one token per row, each row from its own generator.

    Per-row generators make a seeded request's draws independent of what else is batched.
    """
    out = torch.empty(probs.shape[0], dtype=torch.int64)
    for row, gen in enumerate(generators):
        out[row] = torch.multinomial(probs[row], 1, generator=gen)[0]
    return out

"""Per-request token sampling with per-request random generators."""

from __future__ import annotations

import random

import torch

from spinserve.config.sampling import SamplingParams
from spinserve.ops.sampling import draw, greedy, probabilities


class Sampler:
    """Picks one token per logits row.

    Each sampled request owns a `torch.Generator` seeded from its ``seed`` (or from the OS when
    it has none), so its draws do not depend on which other requests share the batch.
    """

    def __init__(self) -> None:
        self._generators: dict[str, torch.Generator] = {}
        self._entropy = random.SystemRandom()

    def add_request(self, request_id: str, params: SamplingParams) -> None:
        if params.greedy:
            return
        gen = torch.Generator()
        gen.manual_seed(params.seed if params.seed is not None else self._entropy.getrandbits(63))
        self._generators[request_id] = gen

    def remove_request(self, request_id: str) -> None:
        self._generators.pop(request_id, None)

    def sample(
        self,
        logits: torch.Tensor,  # [num_rows, vocab]
        rows: list[tuple[str, SamplingParams]],
    ) -> list[int]:
        """One token id per row; row i belongs to request ``rows[i][0]``."""
        tokens = greedy(logits)
        sampled = [i for i, (_, p) in enumerate(rows) if not p.greedy]
        if sampled:
            params = [rows[i][1] for i in sampled]
            probs = probabilities(
                logits[sampled],
                torch.tensor([p.temperature for p in params]),
                torch.tensor([p.top_k for p in params], dtype=torch.int64),
                torch.tensor([p.top_p for p in params]),
            )
            gens = [self._generators[rows[i][0]] for i in sampled]
            tokens[sampled] = draw(probs, gens)
        return tokens.tolist()

"""Per-request random generators for sampling."""

from __future__ import annotations

import random

import torch

from spinserve.config.sampling import SamplingParams


class Generators:
    """One `torch.Generator` per sampled request, seeded from its ``seed`` (or from the OS).

    Per-request generators make a seeded request's draws independent of which other requests
    share its batch. Greedy requests have none.
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

    def get(self, request_id: str) -> torch.Generator | None:
        return self._generators.get(request_id)

    def remove_request(self, request_id: str) -> None:
        self._generators.pop(request_id, None)

"""Model drafters: a small model proposes tokens by decoding ahead of the target.

`ModelDrafter` shares the target's tokenizer (Qwen2.5-Coder-0.5B for the 1.5B): its tokens are
the target's tokens and, for sampled requests, its distributions are over the target's
vocabulary, so verification uses full rejection sampling. The vocabulary is checked at load,
and a drafter whose vocabulary differs is refused with a clear message, as llama.cpp does.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from spinserve.loading.loader import LoadedModel
from spinserve.loading.tokenizer import Tokenizer
from spinserve.speculative.draft_model import DraftJob, DraftModel, DraftOutput
from spinserve.speculative.drafter import Draft, DraftRequest
from spinserve.types.errors import ModelLoadError


def check_same_vocabulary(target: Tokenizer, drafter: Tokenizer, drafter_name: str) -> None:
    """Raise unless every token text maps to the same id in both tokenizers."""
    t, d = target.vocab(), drafter.vocab()
    if t == d:
        return
    differing = sorted(k for k in t.keys() | d.keys() if t.get(k) != d.get(k))
    raise ModelLoadError(
        f"drafter {drafter_name!r} does not share the target's vocabulary "
        f"({len(d)} vs {len(t)} tokens, {len(differing)} differ, e.g. {differing[:3]}); "
        "use it as a cross-tokenizer drafter instead"
    )


class RequestGenerators:
    """Per-request random generators for drafter sampling, seeded from the request's seed."""

    def __init__(self, salt: int) -> None:
        self._salt = salt
        self._gens: dict[str, torch.Generator] = {}
        self._entropy = random.SystemRandom()

    def get(self, request: DraftRequest) -> torch.Generator | None:
        if request.params.greedy:
            return None
        gen = self._gens.get(request.request_id)
        if gen is None:
            seed = request.params.seed
            gen = torch.Generator()
            gen.manual_seed(
                (seed * 1_000_003 + self._salt) % 2**63
                if seed is not None
                else self._entropy.getrandbits(63)
            )
            self._gens[request.request_id] = gen
        return gen

    def drop(self, request_id: str) -> None:
        self._gens.pop(request_id, None)


def to_target_probs(out: DraftOutput, target_vocab: int) -> torch.Tensor | None:
    """[num_tokens, target_vocab] drafter distributions, padded or cut to the target's rows."""
    if not out.probs:
        return None
    probs = torch.stack(out.probs)
    if probs.shape[1] < target_vocab:
        probs = torch.nn.functional.pad(probs, (0, target_vocab - probs.shape[1]))
    return probs[:, :target_vocab]


class ModelDrafter:
    """A same-tokenizer model drafter."""

    is_lookup = False

    def __init__(
        self,
        name: str,
        drafter: LoadedModel,
        target_tokenizer: Tokenizer,
        target_vocab_size: int,
        kv_cache_gib: float,
        kv_cache_dtype: str = "float16",
        prefix_caching: bool = True,
    ) -> None:
        check_same_vocabulary(target_tokenizer, drafter.tokenizer, name)
        self.name = name
        self._model = DraftModel(
            drafter.model,
            kv_cache_gib,
            kv_cache_dtype=kv_cache_dtype,
            prefix_caching=prefix_caching,
        )
        self._target_vocab = target_vocab_size
        self._generators = RequestGenerators(salt=1)

    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        jobs = [
            DraftJob(
                r.request_id, r.token_ids, r.num_draft_tokens, r.params, self._generators.get(r)
            )
            for r in requests
        ]
        outs = self._model.draft(jobs)
        return [Draft(o.token_ids, to_target_probs(o, self._target_vocab)) for o in outs]

    def finish(self, request_id: str, token_ids: Sequence[int]) -> None:
        self._model.release(request_id)
        self._generators.drop(request_id)

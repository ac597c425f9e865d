"""The contract between the engine and whatever runs a model.

The engine (scheduling, speculation, selection, serving) talks to a model only through
`ModelBackend`, so a backend on other kernels (llama.cpp's, a GPU's) fits in without touching
those layers. `spinserve.runtime.runner.ModelRunner` is the torch backend and the reference.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from spinserve.types.batch import StepBatch


@runtime_checkable
class ModelBackend(Protocol):
    """Runs one padding-free step of many requests and keeps their KV between steps."""

    @property
    def vocab_size(self) -> int: ...

    def execute(self, batch: StepBatch) -> torch.Tensor:
        """[batch.num_logits, vocab] fp32 logits, the last ``num_logits`` rows of each chunk in
        chunk order.

        A chunk appends its tokens at ``start_pos``; whatever the backend holds for that
        request at positions ``>= start_pos`` is void from then on. That is how KV is
        truncated: speculation's rollback of rejected drafts (the next chunk starts right
        after the kept tokens) and recompute after preemption (``start_pos`` 0, or the end of
        its cached prefix) need no other call. Position ``p`` of a chunk lives in slot
        ``p % block_size`` of block ``block_ids[p // block_size]``, and the positions before
        ``start_pos`` are read from there: with prefix caching a request's first blocks may
        have been computed by another request, which shares them. A row's logits must not
        depend on which other rows share the step (see docs/design.md, batch invariance):
        greedy speculation, and a cached prefix, are exact only then.
        """
        ...

    def release(self, request_id: str) -> None:
        """The request finished or was aborted: drop anything held for it."""
        ...

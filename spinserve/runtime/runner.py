"""The model runner: one `StepBatch` in, logits for the requested rows out."""

from __future__ import annotations

import torch

from spinserve.models.decoder import Decoder
from spinserve.models.kv_cache import KVCache
from spinserve.ops import native
from spinserve.runtime.inputs import build_step_inputs
from spinserve.types.batch import StepBatch


class ModelRunner:
    """The torch `ModelBackend`: owns a model and its paged KV pool; runs whatever the
    scheduler hands it.

    The pool's slots belong to the engine's block manager, which hands each request its block
    table: KV past a chunk's ``start_pos`` is simply overwritten, and a released request's
    blocks are already back in the pool, so `release` has nothing to do.
    """

    def __init__(
        self,
        model: Decoder,
        num_blocks: int,
        block_size: int,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        """``kv_dtype``: the cached keys' and values' dtype (default: the model's)."""
        self.model = model
        self.block_size = block_size
        kv_dtype = kv_dtype or model.dtype
        self.kv_cache = KVCache(model.config, num_blocks, block_size, kv_dtype)
        cfg = model.config
        self._window = (
            cfg.sliding_window if any(map(cfg.is_sliding, range(cfg.num_layers))) else None
        )
        # Attention rows in one call of our kernel (fp32 activations, float32 or float16
        # caches), else a torch call each.
        self._row_kernel = (
            model.dtype == torch.float32
            and kv_dtype in (torch.float32, torch.float16)
            and native.available()
        )

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @torch.inference_mode()
    def execute(self, batch: StepBatch) -> torch.Tensor:
        """[batch.num_logits, vocab] fp32 logits, rows in chunk order."""
        if not batch:
            return torch.empty(0, self.vocab_size)
        inputs = build_step_inputs(
            batch, self.block_size, self._window, row_kernel=self._row_kernel
        )
        return self.model(
            inputs.input_ids, inputs.positions, inputs.attn, self.kv_cache, inputs.logits_indices
        )

    def release(self, request_id: str) -> None:
        del request_id  # the block manager has freed the request's blocks

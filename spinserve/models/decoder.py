"""A decoder-only transformer for the llama, qwen2 and gemma3 families."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from spinserve.config.model import ModelConfig
from spinserve.models.kv_cache import KVCache
from spinserve.models.layers import DecoderLayer, RMSNorm
from spinserve.ops.attention import AttentionMetadata
from spinserve.ops.rope import RopeTable


class DecoderBody(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, device="meta")
        self.embed_tokens.requires_grad_(False)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.norm_weight_offset)


class Decoder(nn.Module):
    """``forward(input_ids, positions, attn, kv_cache, logits_indices) -> logits``.

    Parameters start on the meta device and are filled by `load_weights`, so a model never
    holds two copies of its weights.
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.model = DecoderBody(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device="meta")
        self.lm_head.requires_grad_(False)
        self._rope: dict[tuple[float, float], RopeTable] = {}
        for layer in range(config.num_layers):
            key = (config.layer_rope_theta(layer), config.layer_rope_factor(layer))
            if key not in self._rope:
                self._rope[key] = RopeTable(config.head_dim, *key)

    def load_weights(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Take each named tensor (Hugging Face names) as a parameter, cast to ``self.dtype``.

        Raises ValueError naming any unknown, missing or misshapen tensor.
        """
        params = dict(self.named_parameters(remove_duplicate=False))
        if self.config.tie_word_embeddings:
            params.pop("lm_head.weight")
        seen: set[str] = set()
        for name, tensor in tensors:
            if name not in params:
                if self.config.tie_word_embeddings and name == "lm_head.weight":
                    continue  # some tied checkpoints carry a copy
                raise ValueError(
                    f"unexpected tensor {name!r} for a {self.config.architecture} model"
                )
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(params[name].shape)}"
                )
            self._set_param(name, tensor.to(self.dtype))
            seen.add(name)
        missing = sorted(set(params) - seen)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _set_param(self, name: str, tensor: torch.Tensor) -> None:
        owner_name, _, leaf = name.rpartition(".")
        owner = self.get_submodule(owner_name)
        setattr(owner, leaf, nn.Parameter(tensor.contiguous(), requires_grad=False))

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens] int64
        positions: torch.Tensor,  # [num_tokens] int64
        attn: AttentionMetadata,
        kv_cache: KVCache,
        logits_indices: torch.Tensor,  # [num_logits] rows of the batch that need logits
    ) -> torch.Tensor:
        """[num_logits, vocab] fp32 logits for the chosen rows."""
        c = self.config
        x = self.model.embed_tokens(input_ids)
        if c.scale_embeddings:
            x = x * torch.tensor(c.embedding_multiplier, dtype=x.dtype)
        tables = {key: table.lookup(positions) for key, table in self._rope.items()}
        for i, layer in enumerate(self.model.layers):
            cos_sin = tables[(c.layer_rope_theta(i), c.layer_rope_factor(i))]
            x = layer(x, cos_sin, attn, kv_cache.k[i], kv_cache.v[i])
        return self.compute_logits(x[logits_indices])

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[rows, hidden] -> [rows, vocab] fp32, after the final norm and any soft-capping."""
        logits = self.lm_head(self.model.norm(hidden)).float()
        cap = self.config.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

"""The pieces of one decoder layer: norm, attention, gated MLP.

Parameter names follow Hugging Face checkpoints so state dicts load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spinserve.config.model import ModelConfig
from spinserve.ops.activation import gated_activation
from spinserve.ops.attention import AttentionMetadata, ragged_attention, row_attention, write_kv
from spinserve.ops.blocks import BlockWeight, block_linear
from spinserve.ops.norm import rms_norm
from spinserve.ops.quant import (
    Int4Weight,
    QuantizedWeight,
    int4_linear,
    int8_linear,
    rowwise_linear,
)
from spinserve.ops.rope import apply_rope


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, weight_offset: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim), requires_grad=False)
        self.eps = eps
        self.weight_offset = weight_offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.weight_offset)


class Linear(nn.Module):
    """``y = x W^T + b`` in the activations' dtype, whatever form W is kept in.

    W is a dense parameter (fp32, or bf16 to halve the bytes read: the input is cast to it and
    the product cast back) or, after `set_quantized`, a `QuantizedWeight` (GGUF 4-bit blocks
    on torch's int4 kernel, or per-row int8). Every form but fp32 gives each row the same
    bits whatever rows share its call (batch invariance, docs/design.md); ``batched_ok``
    lets a bf16 layer whose output is made invariant downstream (the lm_head, whose top
    logits are recomputed exactly) use torch's faster multi-row kernel for several rows.
    """

    def __init__(self, n_in: int, n_out: int, bias: bool, batched_ok: bool = False) -> None:
        super().__init__()
        self.batched_ok = batched_ok
        self.weight: nn.Parameter | None = nn.Parameter(
            torch.empty(n_out, n_in, device="meta"), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.empty(n_out, device="meta"), requires_grad=False) if bias else None
        )
        self.quantized: QuantizedWeight | None = None

    def set_quantized(self, weight: QuantizedWeight) -> None:
        self.quantized, self.weight = weight, None

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one forward reads."""
        return self.quantized.nbytes if self.quantized is not None else self.weight.nbytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.quantized, BlockWeight):
            y = block_linear(x, self.quantized)
        elif isinstance(self.quantized, Int4Weight):
            y = int4_linear(x, self.quantized)
        elif self.quantized is not None:
            y = int8_linear(x, self.quantized)
        elif self.weight.dtype == torch.float32:
            y = F.linear(x.float(), self.weight).to(x.dtype)
        elif self.batched_ok and x.numel() > x.shape[-1]:
            y = F.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)
        else:
            y = rowwise_linear(x.to(self.weight.dtype), self.weight).to(x.dtype)
        return y if self.bias is None else y + self.bias


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj = Linear(c.hidden_size, c.num_heads * c.head_dim, c.attention_bias)
        self.k_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, c.attention_bias)
        self.v_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, c.attention_bias)
        self.o_proj = Linear(c.num_heads * c.head_dim, c.hidden_size, False)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps, c.norm_weight_offset)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps, c.norm_weight_offset)
        self.qk_norm = c.qk_norm
        self.sliding = c.is_sliding(layer)
        self.scale = c.softmax_scale

    def forward(
        self,
        x: torch.Tensor,  # [num_tokens, hidden]
        cos_sin: tuple[torch.Tensor, torch.Tensor],  # each [num_tokens, head_dim]
        attn: AttentionMetadata,
        k_cache: torch.Tensor,  # [num_slots, num_kv_heads, head_dim]
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, *cos_sin), apply_rope(k, *cos_sin)
        write_kv(k_cache, v_cache, k, v, attn.slot_mapping)
        sliding = self.sliding and attn.sliding is not None
        rows = attn.sliding_rows if sliding else attn.full_rows
        if rows is not None:
            out = row_attention(q, k_cache, v_cache, rows, self.scale)
        else:
            spans = attn.sliding if sliding else attn.full
            out = ragged_attention(q, k_cache, v_cache, spans, self.scale)
        return self.o_proj(out.reshape(n, self.num_heads * self.head_dim))


class GatedMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, False)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, False)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, False)
        self.act = c.hidden_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(gated_activation(self.gate_proj(x), self.up_proj(x), self.act))


class DecoderLayer(nn.Module):
    """Pre-norm residual block; gemma3 adds a norm after attention and after the MLP."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        c = config
        norm = lambda: RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_weight_offset)  # noqa: E731
        self.self_attn = Attention(c, layer)
        self.mlp = GatedMLP(c)
        self.input_layernorm = norm()
        # In llama/qwen2 checkpoints "post_attention_layernorm" is the norm *before* the MLP.
        self.post_attention_layernorm = norm()
        self.sandwich = c.sandwich_norm
        if self.sandwich:
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()

    def forward(
        self,
        x: torch.Tensor,  # [num_tokens, hidden]
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        attn: AttentionMetadata,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), cos_sin, attn, k_cache, v_cache)
        if self.sandwich:
            x = x + self.post_attention_layernorm(h)
            h = self.mlp(self.pre_feedforward_layernorm(x))
            return x + self.post_feedforward_layernorm(h)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x))

"""Rotary position embeddings, "rotate half" (neox) layout as in Hugging Face checkpoints."""

from __future__ import annotations

import torch


def rope_inv_freq(head_dim: int, theta: float, linear_factor: float = 1.0) -> torch.Tensor:
    """[head_dim // 2] inverse frequencies, computed exactly as transformers does."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (theta**exponent) / linear_factor


def rope_cos_sin(
    positions: torch.Tensor,  # [num_tokens] int64
    inv_freq: torch.Tensor,  # [head_dim // 2]
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each [num_tokens, head_dim], in fp32."""
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(
    x: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    cos: torch.Tensor,  # [num_tokens, head_dim]
    sin: torch.Tensor,  # [num_tokens, head_dim]
) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return x * cos + rotated * sin


class RopeTable:
    """cos/sin for positions 0..n-1, grown on demand and indexed per step.

    Holds state (the table), so it lives on a model instance, never at module level.
    """

    def __init__(self, head_dim: int, theta: float, linear_factor: float = 1.0) -> None:
        self.inv_freq = rope_inv_freq(head_dim, theta, linear_factor)
        self.cos = torch.empty(0, head_dim)
        self.sin = torch.empty(0, head_dim)

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [num_tokens, head_dim] for ``positions`` [num_tokens]."""
        needed = int(positions.max()) + 1 if positions.numel() else 0
        if needed > self.cos.shape[0]:
            size = max(needed, 2 * self.cos.shape[0], 256)
            self.cos, self.sin = rope_cos_sin(torch.arange(size), self.inv_freq)
        return self.cos[positions], self.sin[positions]

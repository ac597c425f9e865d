"""Gated MLP activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gated_activation(
    gate: torch.Tensor,  # [num_tokens, intermediate]
    up: torch.Tensor,  # [num_tokens, intermediate]
    kind: str,
) -> torch.Tensor:
    """SwiGLU (``silu``) or GeGLU with the tanh approximation (``gelu_tanh``)."""
    if kind == "silu":
        return F.silu(gate) * up
    return F.gelu(gate, approximate="tanh") * up

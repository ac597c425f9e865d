"""RMSNorm in the two conventions of the supported families."""

from __future__ import annotations

import torch


def rms_norm(
    x: torch.Tensor,  # [num_tokens, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    weight_offset: float = 0.0,
) -> torch.Tensor:
    """``x / rms(x) * (weight_offset + weight)``, normalised in fp32.

    Llama casts back to the input dtype before scaling; gemma scales by ``1 + weight`` in fp32
    and casts last. Both are reproduced so low-precision runs match their references.
    """
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if weight_offset:
        return (x32 * (weight_offset + weight.float())).to(x.dtype)
    return weight * x32.to(x.dtype)

"""The bf16 lm_head's logits near the top are recomputed in full precision."""

from __future__ import annotations

import torch

from spinserve.models.decoder import REFINE_MARGIN, _refine_top


def test_top_logits_are_recomputed_exactly_and_the_rest_left_alone():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 64, generator=gen)
    weight = torch.randn(500, 64, generator=gen).bfloat16()
    exact = hidden.double() @ weight.double().t()
    rough = torch.nn.functional.linear(hidden.bfloat16(), weight).float()
    refined = rough.clone()
    _refine_top(refined, hidden, weight)
    near = rough >= rough.max(-1, keepdim=True).values - REFINE_MARGIN
    assert near.sum() >= 3
    torch.testing.assert_close(refined[near], exact[near].float(), rtol=0, atol=1e-5)
    assert torch.equal(refined[~near], rough[~near])
    assert torch.equal(refined.argmax(-1), exact.argmax(-1))


def test_refinement_of_a_row_does_not_depend_on_the_others():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(6, 96, generator=gen)
    weight = torch.randn(300, 96, generator=gen).bfloat16()
    together = torch.nn.functional.linear(hidden.bfloat16(), weight).float()
    _refine_top(together, hidden, weight)
    for i in range(6):
        alone = torch.nn.functional.linear(hidden[i : i + 1].bfloat16(), weight).float()
        _refine_top(alone, hidden[i : i + 1], weight)
        assert torch.equal(alone[0], together[i])

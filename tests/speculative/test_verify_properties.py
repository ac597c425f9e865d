"""Property-based tests of verification and rollback (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spinserve.config.sampling import SamplingParams
from spinserve.runtime.runner import ModelRunner
from spinserve.speculative.drafter import Draft
from spinserve.speculative.verify import verify_batch
from spinserve.types.batch import SeqChunk, StepBatch

VOCAB = 7


@st.composite
def batches(draw):
    """Requests with drafts of 0..6 tokens, greedy or sampled, and logits for their rows."""
    num_requests = draw(st.integers(1, 5))
    drafts = [draw(st.lists(st.integers(0, VOCAB - 1), max_size=6)) for _ in range(num_requests)]
    temps = [draw(st.sampled_from([0.0, 0.5, 1.0])) for _ in range(num_requests)]
    num_rows = sum(len(d) + 1 for d in drafts)
    seed = draw(st.integers(0, 2**31 - 1))
    logits = torch.randn(num_rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3
    return drafts, temps, logits, seed


@settings(max_examples=300, deadline=None)
@given(batches())
def test_verification_properties(batch):
    drafts, temps, logits, seed = batch
    params = [SamplingParams(temperature=t) for t in temps]
    gens = [
        None if t == 0 else torch.Generator().manual_seed(seed + i) for i, t in enumerate(temps)
    ]
    results = verify_batch(logits, [Draft(d) for d in drafts], params, gens)
    row = 0
    for draft, temp, res in zip(drafts, temps, results, strict=True):
        k = len(draft)
        assert 1 <= len(res.token_ids) == res.num_accepted + 1 <= k + 1
        # Accepted tokens are the draft's own prefix.
        assert res.token_ids[: res.num_accepted] == draft[: res.num_accepted]
        if temp == 0:
            target = logits[row : row + k + 1].argmax(-1).tolist()
            # Greedy: every emitted token is the target's argmax, and a draft token was
            # rejected exactly where it disagreed with the target.
            assert res.token_ids == target[: res.num_accepted + 1]
            if res.num_accepted < k:
                assert draft[res.num_accepted] != target[res.num_accepted]
        row += k + 1


@settings(max_examples=25, deadline=None)
@given(
    committed=st.lists(st.integers(0, 255), min_size=1, max_size=30),
    rejected=st.lists(st.integers(0, 255), min_size=1, max_size=8),
    replacement=st.lists(st.integers(0, 255), min_size=1, max_size=8),
)
def test_rollback_restores_the_kv_exactly(tiny_loaded, committed, rejected, replacement):
    """Write drafts past the committed tokens, roll back, write other tokens: the logits are
    bit-identical to a cache that never saw the rejected drafts."""
    model = tiny_loaded["gemma3"].model  # sliding-window layers included
    table = [5, 2, 7, 0, 1, 3, 4, 6, 8, 9, 10, 11]
    spec = ModelRunner(model, num_blocks=12, block_size=4)
    spec.execute(StepBatch([SeqChunk("a", committed, 0, table, 0)]))
    spec.execute(StepBatch([SeqChunk("a", rejected, len(committed), table, len(rejected))]))
    after = spec.execute(
        StepBatch([SeqChunk("a", replacement, len(committed), table, len(replacement))])
    )
    fresh = ModelRunner(model, num_blocks=12, block_size=4)
    fresh.execute(StepBatch([SeqChunk("a", committed, 0, table, 0)]))
    expected = fresh.execute(
        StepBatch([SeqChunk("a", replacement, len(committed), table, len(replacement))])
    )
    assert torch.equal(after, expected)

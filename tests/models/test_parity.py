"""Our decoder against transformers' own implementation, the reference.

Tolerance: fp32 on both sides, so logits agree to float rounding; we allow 1e-4 of the
largest logit (observed: ~1e-7). Both of our paths are checked: the layers in one call of our
kernel (`LayerStack`, llama and qwen2) and layer by layer in torch.
"""

from __future__ import annotations

import random

import pytest
import torch

from spinserve.runtime.block_manager import BlockManager
from spinserve.runtime.runner import ModelRunner
from spinserve.types.batch import SeqChunk, StepBatch

RTOL = 1e-4


@pytest.fixture(params=[True, False], ids=["stack", "torch"])
def paths(request, tiny_loaded, arch):
    """Runs a test once on each path of the decoder (gemma3 has only the torch path)."""
    model = tiny_loaded[arch].model
    model.fused = request.param
    has_stack = model.layer_stack() is not None
    assert has_stack == (request.param and arch != "gemma3")
    yield
    model.fused = True


def reference_logits(ref: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0]


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    err = (ours - ref).abs().max().item()
    assert err <= RTOL * ref.abs().max().item(), f"max abs error {err}"


def test_prefill_matches_reference(arch, tiny_loaded, tiny_refs, paths):
    ids = list(range(5, 45))
    runner = ModelRunner(tiny_loaded[arch].model, num_blocks=8, block_size=8)
    logits = runner.execute(StepBatch([SeqChunk("a", ids, 0, [6, 2, 4, 0, 1], len(ids))]))
    assert_close(logits, reference_logits(tiny_refs[arch], ids))


class ScatteredRequests:
    """Requests whose blocks come from a shuffled pool, so block tables are not contiguous."""

    def __init__(self, runner: ModelRunner, num_blocks: int, block_size: int, seed: int) -> None:
        self.runner = runner
        self.blocks = BlockManager(num_blocks, block_size)
        rng = random.Random(seed)
        order = list(range(num_blocks))
        rng.shuffle(order)
        self._order = order
        self.tables: dict[str, list[int]] = {}

    def chunk(self, rid: str, ids: list[int], start: int, num_logits: int) -> SeqChunk:
        table = self.tables.setdefault(rid, [])
        while len(table) * self.blocks.block_size < start + len(ids):
            table.append(self._order.pop())
        return SeqChunk(rid, ids, start, list(table), num_logits)


@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_batch_matches_reference(arch, tiny_loaded, tiny_refs, seed, paths):
    """Requests at different positions append different numbers of tokens in one forward."""
    rng = random.Random(seed)
    runner = ModelRunner(tiny_loaded[arch].model, num_blocks=64, block_size=4)
    reqs = ScatteredRequests(runner, 64, 4, seed)
    prefix_lens = [1, 7, 13, 22, 30]  # gemma's window is 8: several exceed it
    append_lens = [1, 4, 1, 8, 3]
    seqs = {
        f"r{i}": [rng.randrange(260) for _ in range(p + a)]
        for i, (p, a) in enumerate(zip(prefix_lens, append_lens, strict=True))
    }
    # Step 1: prefill each prefix (one batch), step 2: every request appends in one batch.
    runner.execute(
        StepBatch(
            [
                reqs.chunk(r, s[:p], 0, 0)
                for (r, s), p in zip(seqs.items(), prefix_lens, strict=True)
            ]
        )
    )
    step2 = [
        reqs.chunk(r, s[p:], p, len(s) - p)
        for (r, s), p in zip(seqs.items(), prefix_lens, strict=True)
    ]
    logits = runner.execute(StepBatch(step2))
    row = 0
    for (_, s), p in zip(seqs.items(), prefix_lens, strict=True):
        ref = reference_logits(tiny_refs[arch], s)[p:]
        assert_close(logits[row : row + len(ref)], ref)
        row += len(ref)
    assert row == logits.shape[0]


def test_logits_only_for_requested_rows(tiny_loaded, tiny_refs):
    runner = ModelRunner(tiny_loaded["llama"].model, num_blocks=8, block_size=8)
    ids = list(range(10, 30))
    logits = runner.execute(StepBatch([SeqChunk("a", ids, 0, [0, 1, 2], 3)]))
    assert logits.shape == (3, 264)
    assert_close(logits, reference_logits(tiny_refs["llama"], ids)[-3:])


def test_rollback_by_rewriting_positions(arch, tiny_loaded, tiny_refs, paths):
    """Speculation's rollback: tokens past a position are overwritten by new ones."""
    runner = ModelRunner(tiny_loaded[arch].model, num_blocks=8, block_size=4)
    table = [3, 5, 1, 0, 7]
    runner.execute(StepBatch([SeqChunk("a", list(range(40, 52)), 0, table, 0)]))
    # Keep 9 tokens, then write 4 different ones at positions 9..12.
    new = [7, 8, 9, 10]
    logits = runner.execute(StepBatch([SeqChunk("a", new, 9, table, 4)]))
    ref = reference_logits(tiny_refs[arch], list(range(40, 49)) + new)[9:]
    assert_close(logits, ref)

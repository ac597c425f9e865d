"""The pipelining bound on the simulator's cost profiles."""

from __future__ import annotations

import pytest

from research.selection.pipeline_model import (
    pipelined_seconds,
    sequential_seconds,
    speedup,
    table,
)
from research.selection.workloads import HARDWARE, QWEN_05B


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_a_batch_of_one_cannot_be_pipelined(profile):
    hw = HARDWARE[profile]
    assert pipelined_seconds(hw, QWEN_05B, 1, 4) == sequential_seconds(hw, QWEN_05B, 1, 4)


def test_on_a_flat_forward_pipelining_gains_only_with_a_large_batch():
    """The GPU profile's forward costs nearly the same for 5 or 40 tokens: splitting a small
    batch doubles the forwards for little overlap; a large batch gains."""
    gpu = HARDWARE["gpu"]
    assert speedup(gpu, QWEN_05B, 8, 4) < 1.05
    assert speedup(gpu, QWEN_05B, 256, 4) > 1.2
    assert speedup(gpu, QWEN_05B, 64, 4) > speedup(gpu, QWEN_05B, 8, 4)


def test_a_pipeline_never_beats_the_target_forward_alone():
    """At best the drafter's time is hidden entirely; the split forwards still cost at least
    the whole batch's one forward."""
    for hw in HARDWARE.values():
        for batch in (2, 8, 64):
            forward_only = hw.forward_seconds(batch * 5)
            assert pipelined_seconds(hw, QWEN_05B, batch, 4) >= forward_only - 1e-12


def test_table_lists_every_profile():
    text = table(batches=(1, 8))
    assert all(f"| {name} (perfect overlap) |" in text for name in HARDWARE)

"""Pipelined speculation on paper: when does drafting for one half of the batch while the
target verifies the other beat drafting and verifying the whole batch one after the other?

On the simulator's cost profiles (`workloads.HARDWARE`): a step of ``batch`` requests drafting
``k`` tokens with one model drafter costs, sequentially, the drafter's k rounds for the batch
and then the target's forward of ``batch * (k + 1)`` tokens. Pipelined, the batch is split in
two halves that alternate: while one half is verified the other is drafted, so in steady
state both halves advance once in ``2 * max(draft(half), forward(half))``. That assumes the
two overlap perfectly (no shared units, no bubbles), so it bounds what a pipeline can gain;
where the hardware cannot run them at once (a CPU whose cores both already run the forward:
``benchmarks/pipeline_probe.py``) the gain is nothing.

    .venv/bin/python -m research.selection.pipeline_model      # the table in docs/design.md

The split doubles the number of forwards and drafter rounds, each paying its fixed cost, so
where a forward costs the same for few or many tokens (a memory-bound accelerator at small
batch) pipelining loses; it wins where the per-token cost dominates (large batches).
"""

from __future__ import annotations

import argparse

from research.selection.workloads import HARDWARE, QWEN_05B, Hardware


def sequential_seconds(hw: Hardware, drafter: str, batch: int, k: int) -> float:
    model = hw.drafter(drafter)
    return model.call_seconds(k, batch) + hw.forward_seconds(batch * (k + 1))


def pipelined_seconds(hw: Hardware, drafter: str, batch: int, k: int) -> float:
    """Steady-state seconds for every request of ``batch`` to advance one step, two halves
    overlapping perfectly; a batch of one cannot be split and runs sequentially."""
    if batch < 2:
        return sequential_seconds(hw, drafter, batch, k)
    model = hw.drafter(drafter)
    halves = (batch // 2, batch - batch // 2)
    cycle = 0.0
    for verified, drafted in (halves, halves[::-1]):
        verify = hw.forward_seconds(verified * (k + 1))
        cycle += max(verify, model.call_seconds(k, drafted))
    return cycle


def speedup(hw: Hardware, drafter: str, batch: int, k: int) -> float:
    return sequential_seconds(hw, drafter, batch, k) / pipelined_seconds(hw, drafter, batch, k)


def table(batches: tuple[int, ...] = (1, 8, 32, 64, 256), k: int = 4) -> str:
    lines = [
        f"| profile, {QWEN_05B} drafting k = {k} | "
        + " | ".join(f"batch {b}" for b in batches)
        + " |",
        "|---|" + "---:|" * len(batches),
    ]
    for name, hw in HARDWARE.items():
        cells = " | ".join(f"{speedup(hw, QWEN_05B, b, k):.2f}x" for b in batches)
        lines.append(f"| {name} (perfect overlap) | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args(argv)
    print(table(k=args.k))


if __name__ == "__main__":
    main()

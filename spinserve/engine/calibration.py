"""Start-up measurements for a selection policy that wants step costs.

Before any request, time a few target forwards of one scratch sequence (a decode and
verifications of 2, 4 and 8 drafts: `CALIBRATION_TOKENS`) and each drafter's call for one
draft token on unseen sequences of two lengths (`CALIBRATION_DRAFT_TOKENS`), so the policy
knows what a draft token and a drafter's catch-up cost before its first choice instead of
learning it by paying for it. Each measurement follows an untimed call, which also pages in
memory-mapped weights.
"""

from __future__ import annotations

import time
from functools import partial

from spinserve.config.sampling import SamplingParams
from spinserve.engine.drafter_guard import DrafterGuard
from spinserve.loading.tokenizer import Tokenizer
from spinserve.runtime.backend import ModelBackend
from spinserve.runtime.block_manager import BlockManager, blocks_for
from spinserve.selection.policy import (
    CALIBRATION_DRAFT_TOKENS,
    CALIBRATION_TOKENS,
    DraftTiming,
    StepTiming,
)
from spinserve.speculative.drafter import Drafter, DraftRequest
from spinserve.types.batch import SeqChunk, StepBatch

CALIBRATION_ID = "calibration"  # released before any request exists
# Ordinary code and prose, so that a cross-tokenizer drafter sees as many of its own tokens
# per target token as on real text (a run of one repeated id would merge into few).
CALIBRATION_TEXT = (
    "def mean(values):\n"
    '    """The arithmetic mean of a list of numbers; raises on an empty list."""\n'
    "    return sum(values) / len(values)\n\n"
    "The committee met on Tuesday to review the budget, and agreed to publish its report "
    "before the end of the month, after the auditors have checked every figure in it.\n"
)


def measure_costs(
    runner: ModelBackend,
    blocks: BlockManager,
    guards: dict[str, DrafterGuard],
    tokenizer: Tokenizer,
) -> tuple[list[StepTiming], list[DraftTiming]]:
    """`measure_steps` and `measure_drafters` (on the calibration text)."""
    ids = calibration_ids(tokenizer, runner.vocab_size, max(CALIBRATION_DRAFT_TOKENS))
    return measure_steps(runner, blocks), measure_drafters(guards, ids)


def measure_steps(runner: ModelBackend, blocks: BlockManager) -> list[StepTiming]:
    """Forwards of one scratch sequence of each length in `CALIBRATION_TOKENS`. No request
    holds a block yet, so the pool's first blocks are free to write on."""
    table = list(range(blocks_for(max(CALIBRATION_TOKENS), blocks.block_size)))
    if len(table) > blocks.num_free_blocks:
        return []
    timings = []
    for i, n in enumerate((1, *CALIBRATION_TOKENS)):
        batch = StepBatch([SeqChunk(CALIBRATION_ID, [0] * n, 0, table, n)])
        start = time.perf_counter()
        runner.execute(batch)
        if i:
            timings.append(StepTiming(time.perf_counter() - start, n, 1))
    runner.release(CALIBRATION_ID)
    return timings


def measure_drafters(guards: dict[str, DrafterGuard], ids: list[int]) -> list[DraftTiming]:
    """Each drafter's call for one draft token on the first n of ``ids``, for each n in
    `CALIBRATION_DRAFT_TOKENS`. Each is finished with no tokens, so a drafter that learns from
    finished sequences (suffix) learns nothing from the scratch text."""
    greedy = SamplingParams(max_tokens=1)
    timings = []
    for name, guard in guards.items():
        try:
            seconds = [
                guard.run(partial(_timed_call, guard.drafter, ids[:n], greedy))
                for n in (1, *CALIBRATION_DRAFT_TOKENS)
            ]
        except Exception as exc:  # the policy learns this drafter's cost by using it instead
            guard.note_failure(f"raised {type(exc).__name__}: {exc}")
            continue
        lengths = CALIBRATION_DRAFT_TOKENS
        timings += [DraftTiming(name, n, t) for n, t in zip(lengths, seconds[1:], strict=True)]
    return timings


def _timed_call(drafter: Drafter, ids: list[int], params: SamplingParams) -> float:
    start = time.perf_counter()
    drafter.propose([DraftRequest(CALIBRATION_ID, ids, 1, params)])
    seconds = time.perf_counter() - start
    drafter.finish(CALIBRATION_ID, [])
    return seconds


def calibration_ids(tokenizer: Tokenizer, vocab_size: int, num_tokens: int) -> list[int]:
    """``num_tokens`` target tokens of `CALIBRATION_TEXT` (repeated as needed)."""
    ids = tokenizer.encode(CALIBRATION_TEXT, add_special_tokens=False)
    ids = [t for t in ids if 0 <= t < vocab_size] or [0]
    return (ids * (num_tokens // len(ids) + 1))[:num_tokens]

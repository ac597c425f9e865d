"""Speculation statistics, per request and per drafter. No torch.

Vocabulary (as in vLLM): a *draft step* is one verification of at least one draft token;
*draft tokens* are proposed, *accepted* tokens are those the target kept. The mean accepted
length counts the recovered or bonus token too: ``1 + accepted / steps`` tokens per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass
class SpecStats:
    num_draft_steps: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    drafted_per_position: list[int] = field(default_factory=list)
    accepted_per_position: list[int] = field(default_factory=list)
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    num_failed_calls: int = 0  # a drafter's calls that raised, ran late or returned junk

    def record(self, num_drafted: int, num_accepted: int) -> None:
        """One verification: ``num_drafted`` proposed, the first ``num_accepted`` kept."""
        if num_drafted == 0:
            return
        self.num_draft_steps += 1
        self.num_draft_tokens += num_drafted
        self.num_accepted_tokens += num_accepted
        _bump(self.drafted_per_position, num_drafted)
        _bump(self.accepted_per_position, num_accepted)

    def snapshot(self) -> SpecStats:
        """An independent copy (outputs must not share the engine's live counters)."""
        return replace(
            self,
            drafted_per_position=list(self.drafted_per_position),
            accepted_per_position=list(self.accepted_per_position),
        )

    def merge(self, other: SpecStats) -> None:
        self.num_draft_steps += other.num_draft_steps
        self.num_draft_tokens += other.num_draft_tokens
        self.num_accepted_tokens += other.num_accepted_tokens
        _add(self.drafted_per_position, other.drafted_per_position)
        _add(self.accepted_per_position, other.accepted_per_position)
        self.draft_seconds += other.draft_seconds
        self.verify_seconds += other.verify_seconds
        self.num_failed_calls += other.num_failed_calls

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per draft step: 1 + accepted / steps."""
        if not self.num_draft_steps:
            return 0.0
        return 1.0 + self.num_accepted_tokens / self.num_draft_steps

    @property
    def acceptance_by_position(self) -> list[float]:
        """Fraction of drafts at position j that were accepted."""
        return [
            a / d if d else 0.0
            for a, d in zip(self.accepted_per_position, self.drafted_per_position, strict=False)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_draft_steps": self.num_draft_steps,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "mean_accepted_length": round(self.mean_accepted_length, 4),
            "acceptance_by_position": [round(r, 4) for r in self.acceptance_by_position],
            "draft_seconds": round(self.draft_seconds, 4),
            "verify_seconds": round(self.verify_seconds, 4),
        }


def _bump(counts: list[int], upto: int) -> None:
    """counts[j] += 1 for j < upto, growing the list as needed."""
    if len(counts) < upto:
        counts.extend([0] * (upto - len(counts)))
    for j in range(upto):
        counts[j] += 1


def _add(counts: list[int], other: list[int]) -> None:
    if len(counts) < len(other):
        counts.extend([0] * (len(other) - len(counts)))
    for j, c in enumerate(other):
        counts[j] += c

"""`FleetBoard`: what the replicas tell each other, kept in one Ray actor. No Ray import.

Each replica reports every `REPORT_S` seconds (its load, its metrics, its prior's weight)
and every ``prior_sync_s`` sends the journal of what its selection policy learned from
finished requests since the last time. The board replays the journals, in the order they
arrive, into the fleet's prior and answers with the merged sums, which the replica takes
as its own: every replica's prior is then the fleet's, and a replica that starts later
begins with it instead of from nothing.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass

from spinserve.selection.prior import ArmPrior, Learned, SharedPrior

REPORT_S = 0.5
STALE_S = 10 * REPORT_S  # a replica silent this long is not counted as up (a busy
# machine delays reports by seconds; a replica that stops cleanly leaves at once)


@dataclass(frozen=True)
class ReplicaReport:
    """One replica's state, as it reported it at ``time`` (``time.time()``)."""

    replica: str
    actor_name: str
    num_admitted: int
    max_queue: int
    metrics_text: str
    prior_weight: float
    draining: bool
    time: float


def _unused_default(key: Hashable) -> ArmPrior:
    """The board only merges sums; it never computes a prior."""
    return ArmPrior(0.0, 1.0, 1.0, 0.0)


class FleetBoard:
    def __init__(self) -> None:
        self._prior: SharedPrior | None = None  # made by the first journal, with its settings
        self._reports: dict[str, ReplicaReport] = {}

    def report(self, report: ReplicaReport) -> None:
        self._reports[report.replica] = report

    def leave(self, replica: str) -> None:
        self._reports.pop(replica, None)

    def reports(self) -> list[ReplicaReport]:
        """The replicas heard from in the last `STALE_S` seconds."""
        now = time.time()
        return [r for r in self._reports.values() if now - r.time <= STALE_S]

    def sync_prior(
        self, journal: list[Learned], memory: float, max_weight: float
    ) -> dict[Hashable, tuple[float, ...]]:
        """Merge a replica's journal (its prior's ``memory`` and ``max_weight``: every
        replica runs the same policy settings); the fleet's sums come back."""
        if self._prior is None:
            self._prior = SharedPrior(_unused_default, max_weight, memory)
        self._prior.replay(journal)
        return self._prior.state()

    def prior_state(self) -> dict[Hashable, tuple[float, ...]]:
        return self._prior.state() if self._prior is not None else {}

    def prior_weight(self) -> float:
        return self._prior.total_weight if self._prior is not None else 0.0

"""Policies that do not learn: the homogeneous baseline, two naive mixes, and the oracle.

``fixed:NAME``   every request, every step: NAME with the configured k (``fixed:none``: the
                 target alone)
``random``       every step, a uniformly random arm (fresh per request and step)
``round-robin``  each new request takes the next arm in turn and keeps it to the end
``oracle``       for measurement only: a table request id -> the best single arm for that
                 request, found offline by running every arm on it (`OraclePolicy.from_runs`)
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from spinserve.selection.policy import (
    Choice,
    DraftTiming,
    Feedback,
    LoadView,
    RequestView,
    StepTiming,
)


class Stateless:
    """No learning: calibrate, observe and finish do nothing."""

    wants_step_costs = False

    def calibrate(
        self, timings: Sequence[StepTiming], draft_timings: Sequence[DraftTiming] = ()
    ) -> None:
        pass

    def observe(self, feedback: Sequence[Feedback], timing: StepTiming) -> None:
        pass

    def finish(self, request_id: str) -> None:
        pass


class FixedPolicy(Stateless):
    def __init__(self, choice: Choice) -> None:
        self.choice = choice
        self.name = f"fixed:{choice.drafter or choice.label}"

    def choose(self, requests: Sequence[RequestView], load: LoadView) -> list[Choice]:
        return [self.choice] * len(requests)


class RandomPolicy(Stateless):
    name = "random"

    def __init__(self, arms: Sequence[Choice], seed: int = 0) -> None:
        if not arms:
            raise ValueError("random needs at least one arm")
        self.arms = list(arms)
        self._rng = random.Random(seed)

    def choose(self, requests: Sequence[RequestView], load: LoadView) -> list[Choice]:
        return [self._rng.choice(self.arms) for _ in requests]


class RoundRobinPolicy(Stateless):
    name = "round-robin"

    def __init__(self, arms: Sequence[Choice]) -> None:
        if not arms:
            raise ValueError("round-robin needs at least one arm")
        self.arms = list(arms)
        self._next = 0
        self._assigned: dict[str, Choice] = {}

    def choose(self, requests: Sequence[RequestView], load: LoadView) -> list[Choice]:
        return [self._arm_of(view.request_id) for view in requests]

    def _arm_of(self, request_id: str) -> Choice:
        if request_id not in self._assigned:
            self._assigned[request_id] = self.arms[self._next % len(self.arms)]
            self._next += 1
        return self._assigned[request_id]

    def finish(self, request_id: str) -> None:
        self._assigned.pop(request_id, None)


class OraclePolicy(Stateless):
    """Each request gets the arm a table names for it (keyed by request id, which the
    benchmark chooses when it adds requests, so ids agree across runs).

    >>> runs = {"r0": {Choice("ngram", 4): 9.0, Choice("suffix", 4): 7.5},
    ...         "r1": {Choice("ngram", 4): 2.0, Choice(None, 0): 3.0}}
    >>> OraclePolicy.from_runs(runs).table["r1"].label
    'none'
    """

    name = "oracle"

    def __init__(self, table: Mapping[str, Choice], fallback: Choice | None = None) -> None:
        self.table = dict(table)
        self.fallback = fallback

    @classmethod
    def from_runs(
        cls, tokens_per_second: Mapping[str, Mapping[Choice, float]], fallback: Choice | None = None
    ) -> OraclePolicy:
        """The fastest arm per request, from measured tokens/s of every arm on it."""
        table = {}
        for request_id, by_arm in tokens_per_second.items():
            if not by_arm:
                raise ValueError(f"oracle: no measured arm for request {request_id!r}")
            table[request_id] = max(by_arm, key=lambda c: (by_arm[c], c.label))
        return cls(table, fallback)

    def choose(self, requests: Sequence[RequestView], load: LoadView) -> list[Choice]:
        return [self._arm_of(view.request_id) for view in requests]

    def _arm_of(self, request_id: str) -> Choice:
        choice = self.table.get(request_id, self.fallback)
        if choice is None:
            raise ValueError(
                f"oracle table has no entry for request {request_id!r} and no fallback"
            )
        return choice

    def save(self, path: str | Path) -> None:
        """JSON ``{request_id: "NAME@K" | "none"}``; `load` reads it back."""
        labels = {rid: c.label for rid, c in sorted(self.table.items())}
        Path(path).write_text(json.dumps(labels, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path, fallback: Choice | None = None) -> OraclePolicy:
        try:
            labels = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read oracle table {path}: {e}") from e
        if not isinstance(labels, dict):
            raise ValueError(f"oracle table {path}: expected an object request_id -> choice")
        return cls({rid: Choice.parse(label) for rid, label in labels.items()}, fallback)

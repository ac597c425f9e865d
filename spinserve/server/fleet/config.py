"""Settings of a fleet of engine replicas on Ray Serve (no Ray import: the CLI reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FleetConfig:
    """How many replicas, where, and how Ray Serve scales them.

    The server runs on Ray Serve when ``replicas`` > 1, ``ray_address`` is set, or
    ``min_replicas``/``max_replicas`` ask for autoscaling (then ``replicas``, brought within
    them, is the starting count and ``target_ongoing_requests`` Ray Serve's target per
    replica). ``replica_cpus``
    is what each replica reserves from Ray (default: its engine threads), so Ray places no
    more replicas on a machine than its cores hold.
    """

    replicas: int = field(
        default=1, metadata={"help": "engine replicas; more than 1 serves on Ray Serve"}
    )
    ray_address: str | None = field(
        default=None,
        metadata={
            "help": "Ray cluster to run on (auto, or HOST:PORT of its head); serves on Ray "
            "Serve (default with --replicas > 1: a Ray instance of this machine)"
        },
    )
    min_replicas: int | None = field(
        default=None, metadata={"help": "autoscaling: fewest replicas (Ray Serve's setting)"}
    )
    max_replicas: int | None = field(
        default=None, metadata={"help": "autoscaling: most replicas (Ray Serve's setting)"}
    )
    target_ongoing_requests: float = field(
        default=4.0,
        metadata={"help": "autoscaling: ongoing requests per replica Ray Serve aims at"},
    )
    replica_cpus: float | None = field(
        default=None,
        metadata={"help": "CPUs each replica reserves in Ray (default: its engine threads)"},
    )
    prior_sync_s: float = field(
        default=10.0,
        metadata={"help": "seconds between merges of the replicas' selection priors"},
    )
    affinity_slack: int = field(
        default=4,
        metadata={
            "help": "a conversation stays on its replica unless that one has this many more "
            "ongoing requests than the least loaded"
        },
    )

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        for name in ("min_replicas", "max_replicas"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.autoscaling and (self.min_replicas or 1) > self.most_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas "
                f"({self.most_replicas})"
            )
        if self.target_ongoing_requests <= 0:
            raise ValueError(
                f"target_ongoing_requests must be > 0, got {self.target_ongoing_requests}"
            )
        if self.replica_cpus is not None and self.replica_cpus < 0:
            raise ValueError(f"replica_cpus must be >= 0, got {self.replica_cpus}")
        if self.prior_sync_s <= 0:
            raise ValueError(f"prior_sync_s must be > 0, got {self.prior_sync_s}")
        if self.affinity_slack < 0:
            raise ValueError(f"affinity_slack must be >= 0, got {self.affinity_slack}")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @property
    def enabled(self) -> bool:
        """Whether the server runs on Ray Serve rather than as one process."""
        return self.replicas > 1 or self.ray_address is not None or self.autoscaling

    @property
    def most_replicas(self) -> int:
        if not self.autoscaling:
            return self.replicas
        return self.max_replicas or max(self.replicas, self.min_replicas or 1)

    def autoscaling_config(self) -> dict[str, Any] | None:
        """Ray Serve's ``autoscaling_config``, or None for a fixed count."""
        if not self.autoscaling:
            return None
        low, high = self.min_replicas or 1, self.most_replicas
        return {
            "min_replicas": low,
            "initial_replicas": min(max(self.replicas, low), high),
            "max_replicas": high,
            "target_ongoing_requests": self.target_ongoing_requests,
        }


def threads_per_replica(num_threads: int, num_cpus: int, most_replicas: int) -> int:
    """Engine threads of each replica: as given, or the machine's cores shared among the
    replicas it may hold, so replicas on one machine do not fight over cores.

    >>> threads_per_replica(0, 16, 4), threads_per_replica(0, 2, 4), threads_per_replica(3, 2, 4)
    (4, 1, 3)
    """
    return num_threads or max(1, num_cpus // max(1, most_replicas))

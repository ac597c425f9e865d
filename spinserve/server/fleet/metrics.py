"""The fleet's /metrics: every replica's metrics labelled ``replica``, and the ingress's own.

Each replica's exposition text (as its board report carries it, at most `REPORT_S` old) is
parsed and its samples get a ``replica`` label, so every single-server metric and its PromQL
carry over (``sum by (le)`` across replicas, or ``by (replica)``). The ingress adds:

==========================================  =========  ==========================
spinserve:fleet_replicas  (reporting)       gauge
spinserve:fleet_requests_retried_total      counter    (a replica died; sent again)
spinserve:fleet_request_rejected_total      counter    reason (429 at the ingress)
spinserve:fleet_replica_queue  (admitted)   gauge      replica
spinserve:fleet_prior_weight               gauge      replica, or "fleet"
==========================================  =========  ==========================

``fleet_prior_weight``: the discounted weight of the finished requests behind a replica's
selection prior (summed over arms); a replica that started late shows the fleet's weight
before it has finished a request of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from spinserve.server.fleet.board import ReplicaReport
from spinserve.server.metrics import PREFIX


class FleetMetrics:
    """The ingress's counters (its registry); the rest is made per scrape."""

    def __init__(self, registry: CollectorRegistry, model_name: str) -> None:
        self.registry = registry
        self._model = model_name
        self._retried = Counter(
            PREFIX + "fleet_requests_retried",
            "Requests sent again after their replica died",
            ["model_name"],
            registry=registry,
        )
        self._rejected = Counter(
            PREFIX + "fleet_request_rejected",
            "Requests refused at the ingress",
            ["model_name", "reason"],
            registry=registry,
        )
        self._retried.labels(model_name)

    def observe_retry(self) -> None:
        self._retried.labels(self._model).inc()

    def observe_rejected(self, reason: str) -> None:
        self._rejected.labels(self._model, reason).inc()

    def exposition(self, reports: Sequence[ReplicaReport], fleet_prior_weight: float) -> bytes:
        """Prometheus text of the ingress and every replica that reported."""
        families = list(_relabelled(reports)) + self._fleet_gauges(reports, fleet_prior_weight)
        registry = CollectorRegistry()
        registry.register(_Fixed(families))
        return generate_latest(self.registry) + generate_latest(registry)

    def _fleet_gauges(
        self, reports: Sequence[ReplicaReport], fleet_prior_weight: float
    ) -> list[Metric]:
        m = self._model
        up = GaugeMetricFamily(PREFIX + "fleet_replicas", "Replicas up", labels=["model_name"])
        up.add_metric([m], len(reports))
        queue = GaugeMetricFamily(
            PREFIX + "fleet_replica_queue",
            "Requests admitted at the replica and not finished",
            labels=["model_name", "replica"],
        )
        prior = GaugeMetricFamily(
            PREFIX + "fleet_prior_weight",
            "Weight of the finished requests behind the selection prior",
            labels=["model_name", "replica"],
        )
        for r in reports:
            queue.add_metric([m, r.replica], r.num_admitted)
            prior.add_metric([m, r.replica], r.prior_weight)
        prior.add_metric([m, "fleet"], fleet_prior_weight)
        return [up, queue, prior]


def _relabelled(reports: Sequence[ReplicaReport]) -> Iterable[Metric]:
    """The replicas' families merged by name, each sample labelled with its replica."""
    merged: dict[str, Metric] = {}
    for report in sorted(reports, key=lambda r: r.replica):
        for family in text_string_to_metric_families(report.metrics_text):
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type)
            into.samples += [
                s._replace(labels=s.labels | {"replica": report.replica}) for s in family.samples
            ]
    return merged.values()


class _Fixed:
    """A collector of families made beforehand."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families

"""`AffinityRouter`: Ray Serve's request router for the engine replicas.

Ray Serve calls `choose_replicas` for each request with the replicas it may use; the
ranks come from `affinity.rank_replicas` on the ongoing requests Ray Serve last saw at
each replica, and Ray Serve takes the least loaded replica of the first rank that has
room (fewer than ``max_ongoing_requests``). What was routed where is remembered per
prefix key. The table lives in the ingress's process; with several ingress replicas each
keeps its own.
"""

from __future__ import annotations

import random

from ray.serve.request_router import (
    FIFOMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from spinserve.server.fleet.affinity import AffinityTable, rank_replicas


class AffinityRouter(FIFOMixin, RequestRouter):
    # How long Ray Serve waits for a replica to say how busy it is. A replica's event loop
    # shares the GIL with its engine thread, so on a busy CPU its answer can take longer
    # than Ray's default 0.1 s, and a missed answer sends a conversation elsewhere.
    queue_len_response_deadline_s = 1.0
    max_queue_len_response_deadline_s = 2.0

    def initialize_state(self, slack: int = 4) -> None:
        self._table = AffinityTable()
        self._slack = slack
        self._rng = random.Random()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = {
            key: self.replica_queue_len_cache.get(r.replica_id) or 0 for key, r in by_id.items()
        }
        keys = _keys(pending_request)
        affine = self._table.lookup(keys, by_id) if keys else None
        ranks = rank_replicas(affine, loads, self._slack, self._rng)
        return [[by_id[key] for key in rank] for rank in ranks]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: object
    ) -> None:
        keys = _keys(pending_request)
        if keys:
            self._table.record(keys, replica_id.unique_id)


def _keys(pending_request: PendingRequest | None) -> tuple[str, ...]:
    if pending_request is None:
        return ()
    return tuple(pending_request.kwargs.get("affinity", ()))

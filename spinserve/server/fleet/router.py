"""`AffinityRouter`: Ray Serve's request router for the engine replicas.

Ray Serve calls `choose_replicas` for each request with the replicas it may use; the
ranks come from `affinity.rank_replicas` on the ongoing requests Ray Serve last saw at
each replica, and Ray Serve takes the least loaded replica of the first rank that has
room (fewer than ``max_ongoing_requests``). What was routed where is remembered per
prefix key. The table lives in the ingress's process; with several ingress replicas each
keeps its own.
"""

from __future__ import annotations

from ray.serve.request_router import (
    FIFOMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from spinserve.server.fleet.affinity import AffinityTable, rank_replicas


class AffinityRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, slack: int = 4) -> None:
        self._table = AffinityTable()
        self._slack = slack

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
        return [[by_id[key] for key in rank] for rank in rank_replicas(affine, loads, self._slack)]

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

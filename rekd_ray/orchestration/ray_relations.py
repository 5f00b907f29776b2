"""The training loop's :class:`RelationSource`, backed by the Ray actors.

Inside a Train worker:

* ``push`` buffers teacher embeddings and sends them to the run's
  :class:`TeacherFeatureStore` in batches of ``flush_rows`` as fire-and-forget
  calls (at most ``max_in_flight`` outstanding; only then does it wait).
* ``refresh`` keeps one ``latest`` call to the :class:`ClusteringService` in
  flight and checks it without blocking; a newer version is fetched once
  from the object store and kept locally. Versions only move forward: an
  older one (for example from a restarted service) is ignored and logged.
* ``lookup`` maps dataset indices to prototype ids from the local copy.

Faults: a write the store could not take (it died for good) is logged and
counted, not raised: the row is rewritten on the next pass. When the
clustering service dies, the source reconnects (Ray restarts it, or the
next caller re-creates it) and re-publishes the prototypes it holds, so the
service continues the run's version count instead of starting at 1; until a
newer version arrives the worker keeps what it holds. ``state_dict`` /
``load_state_dict`` carry prototypes, version and the store's table through
checkpoints (Ray Train restarts and ``rekd train --resume``).

Shape legend: N dataset size, B batch, D teacher embedding.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import ray
import torch

from rekd_ray.orchestration.clustering_service import get_or_create_clustering_service
from rekd_ray.training.relations import (
    PrototypeSnapshot,
    lookup_assignments,
    snapshot_from_state,
    snapshot_state,
)

__all__ = ["RayRelationSource"]

logger = logging.getLogger(__name__)


class RayRelationSource:
    """Feature-store writes and prototype look-ups through the Ray actors.

    Args:
        namespace: the run's namespace in the store and the service.
        store: handle of the run's TeacherFeatureStore.
        service: handle of the ClusteringService.
        num_prototypes: M.
        iterations: k-means iterations per clustering.
        seed: k-means seed.
        flush_rows: rows buffered locally before one write call.
        max_in_flight: outstanding writes allowed before ``push`` waits.
        first_wait_timeout_s: how long ``refresh(wait=True)`` waits.
        service_factory: returns a live service handle after the service
            died (default: get or create one with default resources).
        owns_store: False when the store is shared by several runs (a
            sweep's precomputed offline-teacher features): its table is then
            neither checkpointed nor restored by this run.
    """

    def __init__(
        self,
        namespace: str,
        store: ray.actor.ActorHandle,
        service: ray.actor.ActorHandle,
        num_prototypes: int,
        *,
        iterations: int = 20,
        seed: int = 0,
        flush_rows: int = 2048,
        max_in_flight: int = 4,
        first_wait_timeout_s: float = 600.0,
        service_factory=None,
        owns_store: bool = True,
    ) -> None:
        self.namespace = namespace
        self.store = store
        self.service = service
        self.num_prototypes = num_prototypes
        self.iterations = iterations
        self.seed = seed
        self.flush_rows = flush_rows
        self.max_in_flight = max_in_flight
        self.first_wait_timeout_s = first_wait_timeout_s
        self._buffer_indices: list[np.ndarray] = []
        self._buffer_rows: list[np.ndarray] = []
        self._buffered = 0
        self._writes_in_flight: list[ray.ObjectRef] = []
        self._latest_call: ray.ObjectRef | None = None
        self._version = 0
        self._assignments: np.ndarray | None = None
        self._stats: dict[str, float] = {}
        self._wait_seconds = 0.0
        self._stale_versions_seen = 0
        self._reconnects = 0
        self._service_factory = service_factory or get_or_create_clustering_service
        self.owns_store = owns_store
        self._prototypes: np.ndarray | None = None
        self._writes_lost = 0
        # A clustering was requested and no version arrived since.
        self._clustering_pending = False

    @property
    def version(self) -> int:
        return self._version

    def push(self, indices: torch.Tensor, embeddings: torch.Tensor) -> None:
        self._buffer_indices.append(indices.cpu().numpy().astype(np.int64))
        self._buffer_rows.append(embeddings.detach().float().cpu().numpy())
        self._buffered += len(indices)
        if self._buffered >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Send the buffered rows as one write (waits only past the bound)."""
        if not self._buffered:
            return
        indices = np.concatenate(self._buffer_indices)
        rows = np.concatenate(self._buffer_rows)
        self._buffer_indices, self._buffer_rows, self._buffered = [], [], 0
        self._writes_in_flight.append(self.store.write.remote(indices, rows))
        done, self._writes_in_flight = ray.wait(
            self._writes_in_flight, num_returns=len(self._writes_in_flight), timeout=0
        )
        self._wait_writes(done)  # surface write errors
        if len(self._writes_in_flight) > self.max_in_flight:
            self._wait_writes([self._writes_in_flight.pop(0)])

    def _wait_writes(self, refs: list) -> None:
        for ref in refs:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as error:
                # Ray retries writes on a restarted store; this one is gone
                # for good. Its rows come back with the next pass.
                self._writes_lost += 1
                logger.warning("teacher store lost a write: %s", error)

    def sync(self) -> None:
        """Send the buffered rows and wait until every write has landed."""
        self.flush()
        self._wait_writes(self._writes_in_flight)
        self._writes_in_flight = []

    def request_clustering(self) -> None:
        """Let this worker's writes land, then queue a clustering of this run.

        Waits for the submit itself: calls to a threaded actor may run out of
        order, and a later ``wait_for_version`` must see this request.
        """
        self.sync()
        for _attempt in range(2):
            try:
                ray.get(
                    self.service.submit.remote(
                        self.namespace,
                        self.store,
                        self.num_prototypes,
                        self.iterations,
                        self.seed,
                    )
                )
                self._clustering_pending = True
                return
            except ray.exceptions.RayActorError:
                logger.warning("clustering service died; reconnecting")
                self._reconnect()
        logger.warning("clustering request dropped: the service is unreachable")

    def refresh(self, wait: bool = False) -> bool:
        """Pick up a newer clustering if one is published; True if it changed."""
        try:
            if wait:
                return self._wait_for_next_version()
            if self._latest_call is None:
                self._latest_call = self.service.latest.remote(self.namespace)
                return False
            ready, _ = ray.wait([self._latest_call], timeout=0)
            if not ready:
                return False
            published = ray.get(self._latest_call)
            self._latest_call = self.service.latest.remote(self.namespace)
            return self._accept(published)
        except ray.exceptions.RayActorError:
            # The service died (Ray restarts or re-creates it): carry on with
            # the prototypes held; newer versions arrive after reconnecting.
            logger.warning("clustering service died; reconnecting")
            self._reconnect()
            return False

    def _wait_for_next_version(self) -> bool:
        start = time.perf_counter()
        published = ray.get(
            self.service.wait_for_version.remote(
                self.namespace, self._version + 1, self.first_wait_timeout_s
            )
        )
        self._wait_seconds += time.perf_counter() - start
        # A poll sent before the wait would only bring an older version back.
        self._latest_call = None
        return self._accept(published)

    def _reconnect(self) -> None:
        self._latest_call = None
        self._reconnects += 1
        try:
            self.service = self._service_factory()
            # A new service counts from 1: hand it what we hold first.
            self._publish_held()
        except ray.exceptions.RayActorError as error:
            logger.warning("clustering service still unreachable: %s", error)

    def _publish_held(self) -> None:
        if self._version == 0 or self._assignments is None:
            return
        ray.get(
            self.service.publish.remote(
                self.namespace,
                self._version,
                self._assignments,
                self._prototypes,
                self._stats,
            )
        )

    def _accept(self, published: dict | None) -> bool:
        if published is None or published["version"] == self._version:
            return False
        if published["version"] < self._version:
            # A restarted service starts counting again: keep what we hold.
            self._stale_versions_seen += 1
            logger.warning(
                "ignoring prototype version %d older than held version %d",
                published["version"],
                self._version,
            )
            return False
        # The object store hands out a read-only view; copy once per version.
        self._assignments = np.array(ray.get(published["assignments"]))
        prototypes = published.get("prototypes")
        self._prototypes = None if prototypes is None else np.array(ray.get(prototypes))
        self._version = published["version"]
        self._stats = dict(published["stats"])
        self._clustering_pending = False
        return True

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return lookup_assignments(self._assignments, indices)

    def assignments(self) -> np.ndarray | None:
        return self._assignments

    def stats(self) -> dict[str, float]:
        stats = {
            name: value
            for name, value in self._stats.items()
            if name != "clustered_samples"
        }
        stats["prototype_version"] = float(self._version)
        stats["prototype_wait_seconds"] = self._wait_seconds
        stats["stale_versions_ignored"] = float(self._stale_versions_seen)
        stats["service_reconnects"] = float(self._reconnects)
        stats["store_writes_lost"] = float(self._writes_lost)
        return stats

    def state_dict(self) -> dict:
        """Held prototypes and version, plus the store's table (if owned)."""
        snapshot = None
        if self._version > 0 and self._assignments is not None:
            snapshot = PrototypeSnapshot(
                self._version, self._assignments, self._prototypes, self._stats
            )
        features = filled = None
        if self.owns_store:
            self.sync()
            table = ray.get(self.store.state.remote())
            features, filled = table["features"], table["filled"]
        state = snapshot_state(snapshot, features, filled)
        state["clustering_pending"] = self._clustering_pending
        return state

    def load_state_dict(self, state: dict, *, shared: bool = True) -> None:
        """Hold the checkpoint's prototypes; with ``shared`` (rank 0 only),
        refill the store, re-publish the prototypes to the service and redo
        a clustering the checkpoint was still waiting for."""
        snapshot = snapshot_from_state(state)
        self._latest_call = None
        if snapshot is not None:
            self._version = snapshot.version
            self._assignments = snapshot.assignments
            self._prototypes = snapshot.prototypes
            self._stats = dict(snapshot.stats)
        if not shared:
            return
        store = state.get("store")
        if self.owns_store and store is not None:
            ray.get(
                self.store.load_state.remote(
                    {
                        "features": store["features"].numpy(),
                        "filled": store["filled"].numpy(),
                    }
                )
            )
        try:
            self._publish_held()
        except ray.exceptions.RayActorError:
            self._reconnect()
        if state.get("clustering_pending"):
            self.request_clustering()

    def close(self) -> None:
        self.sync()

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

Shape legend: N dataset size, B batch, D teacher embedding.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import ray
import torch

from rekd_ray.orchestration.clustering_service import get_or_create_clustering_service
from rekd_ray.training.relations import lookup_assignments

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
        ray.get(done)  # surface write errors
        if len(self._writes_in_flight) > self.max_in_flight:
            ray.get(self._writes_in_flight.pop(0))

    def sync(self) -> None:
        """Send the buffered rows and wait until every write has landed."""
        self.flush()
        ray.get(self._writes_in_flight)
        self._writes_in_flight = []

    def request_clustering(self) -> None:
        """Let this worker's writes land, then queue a clustering of this run.

        Waits for the submit itself: calls to a threaded actor may run out of
        order, and a later ``wait_for_version`` must see this request.
        """
        self.sync()
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
        except ray.exceptions.RayActorError:
            self._reconnect()
            logger.warning("clustering service died; request dropped, reconnected")

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
        self.service = get_or_create_clustering_service()
        self._reconnects += 1

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
        self._version = published["version"]
        self._stats = dict(published["stats"])
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
        return stats

    def close(self) -> None:
        self.sync()

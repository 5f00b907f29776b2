"""The seam between the training step and the teacher-feature / clustering side.

The step only ever talks to a :class:`RelationSource`:

* ``push(indices, embeddings)`` hands over teacher embeddings of a batch. It
  must not block the step.
* ``sync()`` makes sure this worker's pushes have landed in the store.
* ``request_clustering()`` asks for a new k-means of the newest embeddings.
* ``refresh(wait=...)`` picks up a newer published assignment, if any; it is
  cheap enough to call every step.
* ``lookup(indices)`` maps dataset indices to prototype ids held locally
  (``-1`` for a sample that has no prototype yet).
* ``state_dict()`` / ``load_state_dict(state, shared=...)``: the held
  prototypes with their version and the feature store's table, for
  checkpoints; ``shared=True`` (rank 0 only) also puts the table and the
  prototypes back into the shared store and clustering service.

:class:`LocalRelationSource` does all of it in process (tests, the
one-process loop, benchmarks). ``rekd_ray.orchestration`` backs the same
protocol with the Ray actors, without changes to the loop.

Shape legend: N dataset size, B batch, D teacher embedding.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from rekd_ray.clustering.kmeans import spherical_kmeans

__all__ = [
    "LocalRelationSource",
    "PrototypeSnapshot",
    "RelationSource",
    "snapshot_from_state",
    "snapshot_state",
]

logger = logging.getLogger(__name__)

UNKNOWN = -1


@dataclass(frozen=True)
class PrototypeSnapshot:
    """One published clustering of a run.

    Attributes:
        version: increases by one per clustering of a run; 0 means none yet.
        assignments: (N,) int64 prototype id per dataset index, -1 if unknown.
        prototypes: (M, D) float32 unit-norm centroids.
        stats: clustering metrics (seconds, cluster sizes, empty clusters).
    """

    version: int
    assignments: np.ndarray
    prototypes: np.ndarray
    stats: dict[str, float]


@runtime_checkable
class RelationSource(Protocol):
    """What the training step needs from the teacher-feature / clustering side."""

    @property
    def version(self) -> int: ...

    def push(self, indices: torch.Tensor, embeddings: torch.Tensor) -> None: ...

    def sync(self) -> None: ...

    def request_clustering(self) -> None: ...

    def refresh(self, wait: bool = False) -> bool: ...

    def lookup(self, indices: torch.Tensor) -> torch.Tensor: ...

    def assignments(self) -> np.ndarray | None: ...

    def stats(self) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict, *, shared: bool = True) -> None: ...

    def close(self) -> None: ...


def snapshot_state(
    snapshot: PrototypeSnapshot | None,
    features: np.ndarray | None,
    filled: np.ndarray | None,
) -> dict:
    """A relation source's checkpoint entry: plain tensors, weights_only-safe."""
    state: dict = {"version": 0, "assignments": None, "prototypes": None}
    if snapshot is not None:
        state.update(
            version=int(snapshot.version),
            assignments=torch.from_numpy(np.asarray(snapshot.assignments).copy()),
            prototypes=torch.from_numpy(np.asarray(snapshot.prototypes).copy()),
            stats={name: float(value) for name, value in snapshot.stats.items()},
        )
    if features is not None and filled is not None:
        state["store"] = {
            "features": torch.from_numpy(np.asarray(features).copy()),
            "filled": torch.from_numpy(np.asarray(filled).copy()),
        }
    return state


def snapshot_from_state(state: dict) -> PrototypeSnapshot | None:
    """The :class:`PrototypeSnapshot` saved by :func:`snapshot_state`, if any."""
    if not state.get("version") or state.get("assignments") is None:
        return None
    prototypes = state.get("prototypes")
    return PrototypeSnapshot(
        int(state["version"]),
        state["assignments"].numpy().astype(np.int64),
        None if prototypes is None else prototypes.numpy().astype(np.float32),
        dict(state.get("stats", {})),
    )


class LocalRelationSource:
    """In-process feature store and synchronous faiss clustering.

    Args:
        num_samples: N, the size of the training set (indices are 0..N-1).
        embedding_dim: D of the teacher embeddings.
        num_prototypes: M, the number of k-means clusters.
        iterations: k-means iterations.
        seed: k-means seed; version v uses ``seed + v`` so re-clusterings differ.
    """

    def __init__(
        self,
        num_samples: int,
        embedding_dim: int,
        num_prototypes: int,
        *,
        iterations: int = 20,
        seed: int = 0,
    ) -> None:
        self.num_prototypes = num_prototypes
        self.iterations = iterations
        self.seed = seed
        self._features = np.zeros((num_samples, embedding_dim), dtype=np.float32)
        self._filled = np.zeros(num_samples, dtype=bool)
        self._snapshot: PrototypeSnapshot | None = None
        self._wait_seconds = 0.0

    @property
    def version(self) -> int:
        return 0 if self._snapshot is None else self._snapshot.version

    def push(self, indices: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Store embeddings (B, D) at dataset ``indices`` (B,)."""
        rows = indices.cpu().numpy()
        self._features[rows] = embeddings.detach().float().cpu().numpy()
        self._filled[rows] = True

    def sync(self) -> None:
        """Nothing is buffered in process."""

    def request_clustering(self) -> None:
        """Cluster the embeddings stored so far (synchronously, in process)."""
        snapshot = cluster_store(
            self._features,
            self._filled,
            self.num_prototypes,
            version=self.version + 1,
            iterations=self.iterations,
            seed=self.seed,
        )
        if snapshot is not None:
            self._snapshot = snapshot

    def refresh(self, wait: bool = False) -> bool:
        # Clustering is synchronous here: a request has already published.
        return False

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return lookup_assignments(self.assignments(), indices)

    def assignments(self) -> np.ndarray | None:
        return None if self._snapshot is None else self._snapshot.assignments

    def stats(self) -> dict[str, float]:
        stats = {} if self._snapshot is None else dict(self._snapshot.stats)
        stats["prototype_version"] = float(self.version)
        stats["prototype_wait_seconds"] = self._wait_seconds
        return stats

    def state_dict(self) -> dict:
        return snapshot_state(self._snapshot, self._features, self._filled)

    def load_state_dict(self, state: dict, *, shared: bool = True) -> None:
        """Hold the saved prototypes again and refill the in-process store."""
        self._snapshot = snapshot_from_state(state)
        store = state.get("store")
        if store is not None:
            self._features[...] = store["features"].numpy()
            self._filled[...] = store["filled"].numpy()

    def close(self) -> None:
        pass


def lookup_assignments(
    assignments: np.ndarray | None, indices: torch.Tensor
) -> torch.Tensor:
    """Prototype id per index, -1 everywhere when no clustering exists yet.

    Shape:
        indices: (B,) int64, possibly -1 for empty queue slots -> (B,) int64.
    """
    if assignments is None:
        return torch.full_like(indices, UNKNOWN)
    table = torch.from_numpy(assignments)
    safe = indices.clamp(min=0).cpu()
    labels = table[safe].to(indices.device)
    return torch.where(indices >= 0, labels, torch.full_like(labels, UNKNOWN))


def cluster_store(
    features: np.ndarray,
    filled: np.ndarray,
    num_prototypes: int,
    *,
    version: int,
    iterations: int,
    seed: int,
    num_threads: int | None = None,
    use_gpu: bool | None = None,
) -> PrototypeSnapshot | None:
    """Spherical k-means of the filled rows of a feature store.

    Rows never written, and rows of zero norm, keep prototype -1; ``use_gpu``
    is passed to :func:`spherical_kmeans` (None: GPU 0 if faiss sees one). Returns None
    (and logs) while fewer rows than prototypes are filled, so an early
    request is simply skipped.

    Shape:
        features: (N, D) float32; filled: (N,) bool.
    """
    # A zero row (e.g. every post-ReLU feature of a blank image is 0) has no
    # direction to cluster; it keeps prototype -1 instead of failing the run.
    norms = np.linalg.norm(features, axis=1)  # (N,)
    rows = np.flatnonzero(filled & (norms > 1e-12))
    if rows.size < num_prototypes:
        logger.info(
            "skipping clustering: %d of %d samples have teacher embeddings, "
            "fewer than M=%d",
            rows.size,
            filled.size,
            num_prototypes,
        )
        return None
    start = time.perf_counter()
    result = spherical_kmeans(
        features[rows],
        num_prototypes,
        iterations=iterations,
        seed=seed + version,
        num_threads=num_threads,
        use_gpu=use_gpu,
    )
    assignments = np.full(filled.size, UNKNOWN, dtype=np.int64)
    assignments[rows] = result.assignments
    sizes = result.cluster_sizes
    stats = {
        "cluster_seconds": time.perf_counter() - start,
        "cluster_size_min": float(sizes.min()),
        "cluster_size_max": float(sizes.max()),
        "cluster_size_mean": float(sizes.mean()),
        "empty_clusters": float(result.num_empty),
        "clustered_samples": float(rows.size),
        "zero_feature_samples": float((filled & (norms <= 1e-12)).sum()),
    }
    logger.debug("clustering v%d: %s", version, stats)
    return PrototypeSnapshot(version, assignments, result.centroids, stats)

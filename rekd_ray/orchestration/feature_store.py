"""``TeacherFeatureStore``: teacher embeddings of every sample, by dataset index.

One actor per run namespace. Training workers write (indices, embeddings)
batches with fire-and-forget calls; the clustering service asks for a
snapshot, which the actor ``ray.put``\\ s itself so the object outlives any
caller (an object put by a driver dies with it, see Ray's ownership rules).

Faults: Ray restarts a crashed store (``max_restarts=-1``; writes are
overwrites, so a retried one is harmless). The restarted actor refills its
table from the newest checkpoint under ``restore_dir`` (the run's directory),
so the next clustering sees the last checkpointed table plus the writes since
then rather than a nearly empty one. Writes between that checkpoint and the
crash are lost until the next pass over the data rewrites them.

Shape legend: N dataset size, B rows per write, D embedding.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import ray

__all__ = ["TeacherFeatureStore", "store_actor_name"]

logger = logging.getLogger(__name__)


def store_actor_name(namespace: str) -> str:
    return f"rekd-feature-store-{namespace}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)
class TeacherFeatureStore:
    """Holds an (N, D) float32 table of teacher embeddings for one run.

    Args:
        namespace: the run this store belongs to (its MLflow run id).
        num_samples: N.
        embedding_dim: D.
        restore_dir: where the run's checkpoints live; read only when Ray
            restarts this actor after a crash.
    """

    def __init__(
        self,
        namespace: str,
        num_samples: int,
        embedding_dim: int,
        restore_dir: str | None = None,
    ) -> None:
        self.namespace = namespace
        self._features = np.zeros((num_samples, embedding_dim), dtype=np.float32)
        self._filled = np.zeros(num_samples, dtype=bool)
        self._writes = 0
        self._rows_written = 0
        self._write_seconds = 0.0
        self._restored_from = ""
        if restore_dir and ray.get_runtime_context().was_current_actor_reconstructed:
            self._restore_from_checkpoint(restore_dir)

    def _restore_from_checkpoint(self, restore_dir: str) -> None:
        from rekd_ray.training.checkpoint import find_latest_checkpoint

        found = find_latest_checkpoint(Path(restore_dir))
        store = None if found is None else found[1].get("relation", {}).get("store")
        if store is None or tuple(store["features"].shape) != self._features.shape:
            logger.warning(
                "feature store of run %s restarted empty (no usable checkpoint)",
                self.namespace,
            )
            return
        self.load_state(
            {"features": store["features"].numpy(), "filled": store["filled"].numpy()}
        )
        self._restored_from = str(found[0])
        logger.warning(
            "feature store of run %s restarted; table restored from %s",
            self.namespace,
            found[0],
        )

    def write(self, indices: np.ndarray, embeddings: np.ndarray) -> int:
        """Store ``embeddings`` (B, D) at ``indices`` (B,); returns the write count.

        Raises:
            ValueError: shapes disagree or an index is outside [0, N).
        """
        start = time.perf_counter()
        indices = np.asarray(indices, dtype=np.int64)
        if embeddings.shape != (len(indices), self._features.shape[1]):
            raise ValueError(
                f"embeddings must have shape ({len(indices)}, "
                f"{self._features.shape[1]}), got {tuple(embeddings.shape)}"
            )
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self._filled)):
            raise ValueError(f"indices must lie in [0, {len(self._filled)})")
        self._features[indices] = embeddings
        self._filled[indices] = True
        self._writes += 1
        self._rows_written += len(indices)
        self._write_seconds += time.perf_counter() - start
        return self._writes

    def snapshot(self) -> dict:
        """The current table as object refs owned by this actor.

        Returns:
            ``{"version": writes so far, "features": ref to (N, D) float32,
            "filled": ref to (N,) bool}``. Refs inside a dict are not
            resolved by Ray, so the caller fetches only what it needs.
        """
        return {
            "version": self._writes,
            "features": ray.put(self._features.copy()),
            "filled": ray.put(self._filled.copy()),
        }

    def stats(self) -> dict[str, float]:
        return {
            "writes": float(self._writes),
            "rows_written": float(self._rows_written),
            "filled_samples": float(self._filled.sum()),
            "write_seconds": self._write_seconds,
            "restored": float(bool(self._restored_from)),
        }

    def state(self) -> dict:
        """Everything needed to rebuild the store (for restarts and tests)."""
        return {"features": self._features.copy(), "filled": self._filled.copy()}

    def load_state(self, state: dict) -> None:
        self._features[...] = state["features"]
        self._filled[...] = state["filled"]

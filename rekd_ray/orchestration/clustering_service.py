"""``ClusteringService``: one faiss k-means service per Ray cluster.

Every run and every Tune trial shares it. Requests are keyed by run
namespace: a newer request for a run replaces one still queued for it, so a
slow clustering never builds a backlog. A background thread clusters the
newest snapshot of the run's :class:`TeacherFeatureStore` and publishes
``{version, assignments, prototypes, stats}``; the arrays are ``ray.put`` by
this actor, so workers fetch each version once (zero-copy on the same node)
and look prototypes up locally at every step.

faiss runs on the GPU when the actor holds one (``runtime.clustering_gpus``)
and faiss is a GPU build; ``runtime.clustering_resources`` (a custom resource
such as ``rekd_clustering``) places it on a chosen node type. The first run
that creates the service decides its resources; later runs share it as is.

The actor is detached and named after the code version
(:func:`service_actor_name`), so a service left running by older code is never
reused by newer code with a different protocol.

Faults: Ray restarts a crashed service (``max_restarts=-1``) with empty
state, and a killed one is re-created by the next caller. Workers then
:meth:`ClusteringService.publish` the prototypes they hold, so the run's
version count continues from there. Published versions of a run never go
backwards: a clustering that finishes after a newer version arrived is
dropped (and logged).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import ray

from rekd_ray import __version__
from rekd_ray.clustering.faiss_import import faiss_gpu_count
from rekd_ray.config import ExperimentConfig
from rekd_ray.orchestration.devices import clustering_actor_options, service_uses_gpu
from rekd_ray.training.relations import cluster_store

__all__ = [
    "RAY_NAMESPACE",
    "ClusteringService",
    "clustering_service_for",
    "get_or_create_clustering_service",
    "service_actor_name",
]

logger = logging.getLogger(__name__)

RAY_NAMESPACE = "rekd"
# Bump when the actor's methods or the published dict change.
SERVICE_PROTOCOL = 2


def service_actor_name() -> str:
    return f"rekd-clustering-{__version__}-p{SERVICE_PROTOCOL}"


def default_clustering_threads() -> int:
    # Clustering overlaps with training on the same cores: take half of them
    # rather than oversubscribing (faiss slows down sharply when it does).
    return max(1, (os.cpu_count() or 2) // 2)


@ray.remote(
    num_cpus=0,
    max_concurrency=16,
    concurrency_groups={"waits": 256},
    max_restarts=-1,
)
class ClusteringService:
    """Clusters teacher features of any number of runs, one request at a time.

    Args:
        num_threads: faiss OpenMP threads per clustering (Ray would otherwise
            set one thread for an actor that reserves no CPU).
    """

    def __init__(self, num_threads: int | None = None) -> None:
        self.num_threads = num_threads or default_clustering_threads()
        self.gpu_ids = [str(gpu) for gpu in ray.get_gpu_ids()]
        self.use_gpu = service_uses_gpu(self.gpu_ids, faiss_gpu_count())
        self._condition = threading.Condition()
        self._pending: dict[str, dict] = {}
        self._published: dict[str, dict] = {}
        # Finished attempts per run (published, skipped or failed): waiters
        # wake on each, so a skipped clustering never leaves them hanging.
        self._attempts: dict[str, int] = {}
        self._in_flight: str | None = None
        # Bumped by forget(): a clustering started before it is not published.
        self._generation: dict[str, int] = {}
        self._completed = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def submit(
        self,
        namespace: str,
        store: ray.actor.ActorHandle,
        num_prototypes: int,
        iterations: int = 20,
        seed: int = 0,
    ) -> bool:
        """Queue a clustering of ``store`` for ``namespace``.

        Returns:
            True when it replaced a request of the same run still waiting.
        """
        request = {
            "store": store,
            "num_prototypes": num_prototypes,
            "iterations": iterations,
            "seed": seed,
            "submitted": time.time(),
        }
        with self._condition:
            # Replacing keeps the run's place in the queue.
            replaced = namespace in self._pending
            self._pending[namespace] = request
            self._condition.notify_all()
        return replaced

    def latest(self, namespace: str) -> dict | None:
        """The newest published clustering of a run, or None."""
        with self._condition:
            return self._published.get(namespace)

    @ray.method(concurrency_group="waits")
    def wait_for_version(
        self, namespace: str, min_version: int, timeout_s: float
    ) -> dict | None:
        """Block until a version >= ``min_version`` exists, the next clustering
        attempt of the run ends without one, or ``timeout_s`` passes."""

        def ready() -> bool:
            published = self._published.get(namespace)
            if published is not None and published["version"] >= min_version:
                return True
            if self._attempts.get(namespace, 0) > attempts_before:
                return True
            # Nothing queued or running for this run: no version is coming.
            return namespace not in self._pending and self._in_flight != namespace

        with self._condition:
            attempts_before = self._attempts.get(namespace, 0)
            self._condition.wait_for(ready, timeout=timeout_s)
            return self._published.get(namespace)

    def publish(
        self,
        namespace: str,
        version: int,
        assignments,
        prototypes,
        stats: dict[str, float] | None = None,
    ) -> bool:
        """Re-publish prototypes a worker holds (after a restart or a resume).

        Taken only when newer than what this service holds for the run, so
        the next clustering gets ``version + 1``. Returns True when taken.

        Shape:
            assignments: (N,) int64; prototypes: (M, D) float32 or None.
        """
        # The arrays arrive as the caller's objects: put copies owned by this
        # actor, so they outlive the caller.
        published = {
            "version": int(version),
            "assignments": ray.put(np.array(assignments, dtype=np.int64)),
            "prototypes": None
            if prototypes is None
            else ray.put(np.array(prototypes, dtype=np.float32)),
            "stats": dict(stats or {}),
        }
        with self._condition:
            held = self._published.get(namespace)
            if held is not None and held["version"] >= version:
                return False
            self._published[namespace] = published
            self._condition.notify_all()
        logger.info("run %s: prototypes v%d re-published", namespace, version)
        return True

    def forget(self, namespace: str) -> None:
        """Drop a finished run's queued request and published results."""
        with self._condition:
            self._pending.pop(namespace, None)
            self._published.pop(namespace, None)
            self._attempts.pop(namespace, None)
            self._generation[namespace] = self._generation.get(namespace, 0) + 1

    def info(self) -> dict:
        with self._condition:
            return {
                "name": service_actor_name(),
                "num_threads": self.num_threads,
                "use_gpu": self.use_gpu,
                "gpu_ids": self.gpu_ids,
                "pending": len(self._pending),
                "runs": sorted(self._published),
                "completed": self._completed,
            }

    def _next_request(self) -> tuple[str, dict]:
        with self._condition:
            self._condition.wait_for(lambda: bool(self._pending))
            namespace = next(iter(self._pending))
            request = self._pending.pop(namespace)
            request["generation"] = self._generation.get(namespace, 0)
            self._in_flight = namespace
            return namespace, request

    def _serve(self) -> None:
        while True:
            namespace, request = self._next_request()
            try:
                self._cluster(namespace, request)
            except Exception:  # keep serving the other runs
                logger.exception("clustering of run %s failed", namespace)
            with self._condition:
                self._attempts[namespace] = self._attempts.get(namespace, 0) + 1
                self._in_flight = None
                self._condition.notify_all()

    def _cluster(self, namespace: str, request: dict) -> None:
        snapshot_refs = ray.get(request["store"].snapshot.remote())
        features = ray.get(snapshot_refs["features"])  # (N, D), read-only
        filled = ray.get(snapshot_refs["filled"])  # (N,)
        with self._condition:
            previous = self._published.get(namespace)
        version = 1 if previous is None else previous["version"] + 1
        snapshot = cluster_store(
            features,
            filled,
            request["num_prototypes"],
            version=version,
            iterations=request["iterations"],
            seed=request["seed"],
            num_threads=self.num_threads,
            use_gpu=self.use_gpu,
        )
        if snapshot is None:
            return
        stats = dict(snapshot.stats)
        stats["queue_seconds"] = time.time() - request["submitted"]
        published = {
            "version": version,
            "assignments": ray.put(snapshot.assignments),
            "prototypes": ray.put(snapshot.prototypes),
            "stats": stats,
        }
        with self._condition:
            if request["generation"] != self._generation.get(namespace, 0):
                return  # the run was forgotten while it was being clustered
            held = self._published.get(namespace)
            if held is not None and held["version"] >= version:
                # A worker re-published a newer version meanwhile.
                logger.warning(
                    "run %s: dropping clustering v%d, v%d is already published",
                    namespace,
                    version,
                    held["version"],
                )
                return
            self._published[namespace] = published
            self._completed += 1
            self._condition.notify_all()
        logger.info(
            "run %s: prototypes v%d in %.2fs",
            namespace,
            version,
            stats["cluster_seconds"],
        )


def get_or_create_clustering_service(
    num_threads: int | None = None,
    num_gpus: float = 0,
    resources: dict[str, float] | None = None,
) -> ray.actor.ActorHandle:
    """The cluster-wide service, created on first use (detached, versioned name).

    Args:
        num_threads: faiss threads; None takes half the node's cores.
        num_gpus: GPUs the actor requests; faiss uses one when it gets any.
        resources: custom resources the actor requests (node placement).
    """
    return ClusteringService.options(
        name=service_actor_name(),
        namespace=RAY_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        num_gpus=num_gpus,
        resources=resources or {},
        # Never inside the caller's placement group (a Tune trial's or Ray
        # Train's): the service would die with that group when the run ends,
        # and its restart would wait forever for the group's resources.
        scheduling_strategy="DEFAULT",
    ).remote(num_threads)


def clustering_service_for(config: ExperimentConfig) -> ray.actor.ActorHandle:
    """The shared service, created with ``config.runtime``'s resources if new.

    Logs where it clusters, and warns when a service already running was
    created with other resources than this run asks for (it is reused).
    """
    options = clustering_actor_options(config)
    service = get_or_create_clustering_service(**options)
    info = ray.get(service.info.remote())
    logger.info(
        "clustering service %s: faiss on %s",
        info["name"],
        f"GPU {info['gpu_ids']}" if info["use_gpu"] else "CPU",
    )
    if bool(options["num_gpus"]) != bool(info["gpu_ids"]):
        logger.warning(
            "the running clustering service has GPU(s) %s while this run asks "
            "for runtime.clustering_gpus=%g; it is shared, so it stays as it "
            "is until it is killed (ray.kill of actor %s)",
            info["gpu_ids"] or "none",
            options["num_gpus"],
            info["name"],
        )
    return service

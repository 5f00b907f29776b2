"""``rekd bench clustering``: the ClusteringService against raw faiss.

For N in {10k, 60k, 250k} unit vectors (D = 128, drawn around 64 random
directions) and M in {10, 100, 1000} prototypes, 20 iterations:

* service: from ``submit`` to the worker holding the assignments: the
  service snapshots the TeacherFeatureStore, runs
  :func:`~rekd_ray.training.relations.cluster_store` (spherical k-means plus
  the assignment of every sample), publishes through the object store, and
  the caller fetches the assignments, as a worker does;
* raw faiss: ``faiss.Clustering`` (spherical) plus one search of all points,
  in this process, on the same normalized array with the same seed and the
  same number of threads as the service.

Target (the product's): service / raw faiss <= 1.1. sklearn's ``KMeans`` (Lloyd,
random init, Euclidean on the unit vectors) runs the smallest N for
reference, and faiss on the GPU where one is visible. Last, a short ReKD
run with the actors measures the share of training time the step waits for
prototypes (target <= 1 %).

NOTE: the service uses half the cores on purpose (it shares them with
training), so both sides run with that many threads here.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from rekd_ray.bench.common import BenchResult, Check, Table, timed
from rekd_ray.bench.workload import (
    bench_config,
    create_store,
    ensure_ray,
    new_namespace,
    ray_relation_source,
)
from rekd_ray.clustering.faiss_import import faiss_gpu_count, import_faiss
from rekd_ray.clustering.kmeans import spherical_kmeans
from rekd_ray.data.datasets import load_dataset
from rekd_ray.training.loop import train

__all__ = ["run"]

logger = logging.getLogger(__name__)

TARGET_RATIO = 1.1
TARGET_WAIT_SHARE = 0.01
DIM = 128
ITERATIONS = 20
SEED = 0
WAIT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Sizes:
    sizes: tuple[int, ...]
    prototypes: tuple[int, ...]
    # The short ReKD run that measures the wait for prototypes.
    batch_size: int
    steps_per_epoch: int
    epochs: int
    queue_size: int
    num_prototypes: int


DEFAULT = Sizes(
    (10_000, 60_000, 250_000), (10, 100, 1000), 256, 8, 3, 4096, num_prototypes=300
)
QUICK = Sizes((10_000,), (10, 100, 1000), 64, 4, 2, 256, num_prototypes=16)


def run(quick: bool = False) -> BenchResult:
    """Service vs raw faiss on the grid, sklearn reference, prototype waits."""
    from rekd_ray.orchestration.clustering_service import default_clustering_threads

    sizes = QUICK if quick else DEFAULT
    threads = default_clustering_threads()
    grid = _grid(sizes, threads)
    reference = _sklearn(sizes.sizes[0], sizes.prototypes, threads)
    waits = _prototype_waits(sizes)

    grid_table = Table(
        f"clustering: service vs raw faiss (D={DIM}, {ITERATIONS} iterations, "
        f"{threads} thread(s))",
        ["N", "M", "service s", "in k-means s", "raw faiss s", "ratio", "GPU s"],
    )
    checks = []
    for row in grid:
        grid_table.add(
            row["n"],
            row["m"],
            row["service_seconds"],
            row["service_cluster_seconds"],
            row["faiss_seconds"],
            row["ratio"],
            row.get("faiss_gpu_seconds"),
        )
        checks.append(
            Check(
                f"service / faiss (N={row['n']}, M={row['m']})",
                row["ratio"],
                "<=",
                TARGET_RATIO,
            )
        )
    sklearn_table = Table(
        f"clustering: sklearn KMeans for reference (N={sizes.sizes[0]})",
        ["M", "sklearn s", "raw faiss s", "sklearn / faiss"],
    )
    for row in reference:
        sklearn_table.add(
            row["m"], row["sklearn_seconds"], row["faiss_seconds"], row["ratio"]
        )
    wait_table = Table(
        "clustering: waiting for prototypes in a short ReKD run (actors)",
        ["epoch", "epoch s", "wait s"],
    )
    for epoch, (seconds, wait) in enumerate(waits["epochs"]):
        wait_table.add(epoch, seconds, wait)
    checks.append(
        Check(
            "share of epoch time waiting for prototypes",
            waits["share"],
            "<=",
            TARGET_WAIT_SHARE,
        )
    )
    gpus = faiss_gpu_count()
    return BenchResult(
        name="clustering",
        quick=quick,
        params={
            **asdict(sizes),
            "dim": DIM,
            "iterations": ITERATIONS,
            "threads": threads,
            "faiss_gpus": gpus,
        },
        results={"grid": grid, "sklearn": reference, "prototype_wait": waits},
        checks=checks,
        tables=[grid_table, sklearn_table, wait_table],
        notes=[
            "GPU: none visible to faiss (CPU build or no CUDA device)"
            if not gpus
            else f"GPU: faiss sees {gpus}",
            "'in k-means s' is the service's own cluster_store time; the rest "
            "of 'service s' is the store snapshot, the object store and polling",
        ],
    )


def unit_vectors(n: int, dim: int = DIM, seed: int = SEED) -> np.ndarray:
    """(N, D) float32 unit vectors around 64 random directions."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((64, dim)).astype(np.float32)
    x = centers[rng.integers(0, 64, size=n)]
    x += 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def raw_faiss_seconds(x: np.ndarray, m: int, seed: int, threads: int) -> float:
    """Spherical k-means plus the assignment of all points, faiss calls only."""
    faiss = import_faiss()
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        with timed() as clock:
            params = faiss.ClusteringParameters()
            params.spherical = True
            params.niter = ITERATIONS
            params.seed = seed
            params.min_points_per_centroid = 1
            index = faiss.IndexFlatIP(x.shape[1])
            faiss.Clustering(x.shape[1], m, params).train(x, index)
            index.search(x, 1)  # the index holds the centroids after train
    finally:
        faiss.omp_set_num_threads(previous)
    return clock["seconds"]


def _grid(sizes: Sizes, threads: int) -> list[dict]:
    import ray

    from rekd_ray.orchestration.clustering_service import ClusteringService

    ensure_ray()
    # A private service, so that no other run's request queues before ours.
    service = ClusteringService.options(max_restarts=0).remote(threads)
    ray.get(service.info.remote())  # started: its start-up is not timed
    rows = []
    try:
        for n in sizes.sizes:
            x = unit_vectors(n)
            namespace = new_namespace()
            store = create_store(namespace, n, DIM)
            try:
                _fill(store, x)
                for version, m in enumerate(sizes.prototypes, start=1):
                    row = _case(service, store, namespace, version, x, m, threads)
                    rows.append(row)
            finally:
                ray.get(service.forget.remote(namespace))
                ray.kill(store)
    finally:
        ray.kill(service)
    return rows


def _fill(store, x: np.ndarray, chunk: int = 65_536) -> None:
    import ray

    for start in range(0, len(x), chunk):
        rows = np.arange(start, min(start + chunk, len(x)))
        ray.get(store.write.remote(rows, x[rows]))


def _case(service, store, namespace, version, x, m, threads) -> dict:
    import ray

    with timed() as clock:
        ray.get(service.submit.remote(namespace, store, m, ITERATIONS, SEED))
        published = ray.get(
            service.wait_for_version.remote(namespace, version, WAIT_TIMEOUT_S)
        )
        if published is None or published["version"] != version:
            raise RuntimeError(f"the service published no version {version}")
        ray.get(published["assignments"])
    # The service seeds version v with seed + v: the same k-means here.
    faiss_seconds = raw_faiss_seconds(x, m, SEED + version, threads)
    row = {
        "n": len(x),
        "m": m,
        "service_seconds": clock["seconds"],
        "service_cluster_seconds": published["stats"]["cluster_seconds"],
        "faiss_seconds": faiss_seconds,
        "ratio": clock["seconds"] / faiss_seconds,
    }
    if faiss_gpu_count():
        with timed() as gpu:
            spherical_kmeans(x, m, iterations=ITERATIONS, seed=SEED, use_gpu=True)
        row["faiss_gpu_seconds"] = gpu["seconds"]
    logger.info(
        "clustering N=%d M=%d: service %.2f s, faiss %.2f s",
        len(x),
        m,
        row["service_seconds"],
        faiss_seconds,
    )
    return row


def _sklearn(n: int, prototypes: tuple[int, ...], threads: int) -> list[dict]:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    x = unit_vectors(n)
    rows = []
    for m in prototypes:
        kmeans = KMeans(
            n_clusters=m,
            init="random",
            n_init=1,
            max_iter=ITERATIONS,
            tol=0.0,
            random_state=SEED,
        )
        with threadpool_limits(threads), timed() as clock:
            kmeans.fit(x)
        faiss_seconds = raw_faiss_seconds(x, m, SEED, threads)
        rows.append(
            {
                "n": n,
                "m": m,
                "sklearn_seconds": clock["seconds"],
                "sklearn_iterations": int(kmeans.n_iter_),
                "faiss_seconds": faiss_seconds,
                "ratio": clock["seconds"] / faiss_seconds,
            }
        )
    return rows


def _prototype_waits(sizes: Sizes) -> dict:
    """A short ReKD run through the actors; its waits for prototypes."""
    config = bench_config(
        batch_size=sizes.batch_size,
        steps_per_epoch=sizes.steps_per_epoch,
        epochs=sizes.epochs,
        queue_size=sizes.queue_size,
        num_prototypes=sizes.num_prototypes,
    )
    data = load_dataset(config.data, seed=config.seed)
    with ray_relation_source(config, data.num_train) as source:
        history = train(config, data, relation_source=source).history
    epochs = [
        (row["time/epoch_seconds"], row["time/prototype_wait_seconds"])
        for row in history
    ]
    total = sum(seconds for seconds, _ in epochs)
    waited = sum(wait for _, wait in epochs)
    return {
        "num_samples": data.num_train,
        "num_prototypes": sizes.num_prototypes,
        "epochs": epochs,
        "wait_seconds": waited,
        "epoch_seconds": total,
        "share": waited / total,
    }

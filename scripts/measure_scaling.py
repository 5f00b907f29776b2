"""Feature-store memory and clustering time at ImageNet scale (1.28M x 128).

Measures, on synthetic unit vectors drawn around M random directions, with
the CPU faiss installed here (no Ray; the numbers the README's Scaling
section quotes):

* store: bytes of the (N, D) float32 table plus the (N,) filled mask, the
  time of one snapshot copy (what ``TeacherFeatureStore.snapshot`` does
  before ``ray.put``) and of batched writes at random indices (256 rows);
* clustering: :func:`rekd_ray.training.relations.cluster_store`, which the
  ClusteringService runs, at two iteration counts; a line through the two
  gives seconds per k-means iteration and the fixed part (input copy and
  normalization, the assignment of all N points, duplicate detection),
  extrapolated to ``--target-iterations``; the peak of numpy allocations
  during the call (tracemalloc; faiss's own buffers are not counted) and
  the process's peak RSS;
* host-side parts timed alone (they stay on the CPU with a GPU faiss):
  float32 copy + L2 normalization, and the duplicate-row detection of the
  final assignment.

Run it on an otherwise idle machine:

    .venv/bin/python scripts/measure_scaling.py --json /tmp/scaling.json
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
import tracemalloc

import numpy as np

from rekd_ray.clustering.faiss_import import import_faiss
from rekd_ray.training.relations import cluster_store

logger = logging.getLogger("measure_scaling")

WRITE_BATCH = 256


def synthetic_features(n: int, d: int, centers: int, seed: int) -> np.ndarray:
    """Unit vectors around ``centers`` random directions. Shape: (N, D)."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((centers, d), dtype=np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    features = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):  # chunks keep the temporaries small
        stop = min(n, start + 100_000)
        labels = rng.integers(0, centers, stop - start)
        noise = rng.standard_normal((stop - start, d), dtype=np.float32)
        features[start:stop] = directions[labels] + 0.1 * noise
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return features


def measure_store(features: np.ndarray, seed: int) -> dict[str, float]:
    n, d = features.shape
    table = np.zeros((n, d), dtype=np.float32)
    filled = np.zeros(n, dtype=bool)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    start = time.perf_counter()
    for first in range(0, n, WRITE_BATCH):
        rows = order[first : first + WRITE_BATCH]
        table[rows] = features[rows]
        filled[rows] = True
    write_seconds = time.perf_counter() - start
    start = time.perf_counter()
    copies = (table.copy(), filled.copy())
    snapshot_seconds = time.perf_counter() - start
    del copies
    return {
        "store_bytes": float(table.nbytes + filled.nbytes),
        "write_rows_per_second": n / write_seconds,
        "snapshot_copy_seconds": snapshot_seconds,
    }


def time_clustering(
    features: np.ndarray, prototypes: int, iterations: int, threads: int
) -> dict[str, float]:
    filled = np.ones(len(features), dtype=bool)
    tracemalloc.start()
    start = time.perf_counter()
    snapshot = cluster_store(
        features,
        filled,
        prototypes,
        version=1,
        iterations=iterations,
        seed=0,
        num_threads=threads,
        use_gpu=False,
    )
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert snapshot is not None, "cluster_store skipped the clustering"
    logger.info("M=%d, %d iterations: %.1f s", prototypes, iterations, seconds)
    return {
        "iterations": iterations,
        "seconds": seconds,
        "numpy_peak_bytes": float(peak),
        "empty_clusters": snapshot.stats["empty_clusters"],
    }


def time_host_parts(features: np.ndarray, threads: int) -> dict[str, float]:
    faiss = import_faiss()
    faiss.omp_set_num_threads(threads)
    start = time.perf_counter()
    x = np.array(features, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(x)
    normalize_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rows = x.view(np.dtype((np.void, x.shape[1] * x.itemsize))).ravel()
    np.unique(rows, return_index=True, return_inverse=True)
    unique_seconds = time.perf_counter() - start
    return {
        "copy_normalize_seconds": normalize_seconds,
        "unique_rows_seconds": unique_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=1_281_167)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--prototypes", type=int, default=1000)
    parser.add_argument("--iterations", type=int, nargs=2, default=(2, 6))
    parser.add_argument("--target-iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    start = time.perf_counter()
    features = synthetic_features(
        args.num_samples, args.dim, args.prototypes, args.seed
    )
    logger.info("features %s in %.1f s", features.shape, time.perf_counter() - start)
    results: dict = {"num_samples": args.num_samples, "dim": args.dim}
    results["prototypes"] = args.prototypes
    results["threads"] = args.threads
    results["store"] = measure_store(features, args.seed)
    results["host_parts"] = time_host_parts(features, args.threads)
    runs = [
        time_clustering(features, args.prototypes, k, args.threads)
        for k in args.iterations
    ]
    (k1, t1), (k2, t2) = [(r["iterations"], r["seconds"]) for r in runs]
    per_iteration = (t2 - t1) / (k2 - k1)
    fixed = t1 - k1 * per_iteration
    results["clustering"] = {
        "runs": runs,
        "seconds_per_iteration": per_iteration,
        "fixed_seconds": fixed,
        "extrapolated_iterations": args.target_iterations,
        "extrapolated_seconds": fixed + args.target_iterations * per_iteration,
    }
    results["peak_rss_bytes"] = float(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as file:
            file.write(text + "\n")


if __name__ == "__main__":
    main()

"""``rekd bench``: measured answers to "what does this part cost?".

One module per benchmark, each with ``run(quick: bool) -> BenchResult``:

* ``overhead``: the ReKD loop's images/s in one process vs under Ray Train;
* ``step``: MoCo-v2 vs ReKD step time per student, and the share of the
  ReKD step spent in relation mining and service calls;
* ``clustering``: ClusteringService vs raw faiss (and sklearn), and the
  share of training time spent waiting for prototypes;
* ``store``: TeacherFeatureStore write / snapshot throughput and how fast
  a worker picks up a new assignments version;
* ``data``: two-view augmentation images/s with 0-2 loader workers vs what
  the training step consumes.

This module imports nothing heavy, so the CLI can validate a name at once.
"""

from __future__ import annotations

import importlib
import time
import warnings
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rekd_ray.bench.common import BenchResult

__all__ = ["BENCHMARK_NAMES", "run_benchmark"]

BENCHMARK_NAMES: tuple[str, ...] = ("overhead", "step", "clustering", "store", "data")


def run_benchmark(name: str, *, quick: bool = False) -> BenchResult:
    """Run one benchmark and stamp it with the environment and its wall time.

    Raises:
        ValueError: ``name`` is not one of :data:`BENCHMARK_NAMES`.
    """
    if name not in BENCHMARK_NAMES:
        raise ValueError(
            f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARK_NAMES)}"
        )
    import torch

    from rekd_ray.bench.common import environment

    module = importlib.import_module(f"rekd_ray.bench.{name}")
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    env = environment()  # before the run: the load average it started under
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # Small benchmark sizes cluster few points per prototype on purpose.
            warnings.filterwarnings("ignore", message="clustering .* points into")
            result = module.run(quick=quick)
    finally:
        torch.set_num_threads(threads)  # the loop sets its own thread count
    result.seconds = time.perf_counter() - start
    result.started_at = started_at
    result.environment = env
    return result

"""The training workload the loop benchmarks share, and how they time it.

* :func:`bench_config`: a ReKD (or MoCo-v2) experiment on in-memory synthetic
  28x28 images (same pixel count as Fashion-MNIST, so the step costs the
  same), with the kNN monitor shrunk so that epoch ends stay short.
* :class:`StepClock`: :class:`~rekd_ray.training.loop.TrainHooks` that
  timestamp every step. Throughput is taken over consecutive steps of the
  same epoch after a warm-up, so epoch ends (clustering request, kNN
  monitor) and the wait for the first prototypes are left out.
* :class:`TimedRelationSource`: wraps any relation source and adds up the
  seconds the step spends in its calls (push, refresh, lookup).
* :func:`ensure_ray`: the local Ray that ``rekd train`` would start.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from rekd_ray.bench.common import Stopwatch
from rekd_ray.config import ExperimentConfig, build_config
from rekd_ray.training.loop import TrainHooks

__all__ = [
    "StepClock",
    "TimedRelationSource",
    "bench_config",
    "create_store",
    "ensure_ray",
    "new_namespace",
    "ray_relation_source",
]

# The main job's pair (experiments/fashion_mnist_rekd.yaml).
MAIN_STUDENT = "mobilenet_v3_small"
MAIN_TEACHER = "alexnet"


def bench_config(
    *,
    method: str = "rekd",
    student: str = MAIN_STUDENT,
    teacher: str = MAIN_TEACHER,
    batch_size: int = 256,
    steps_per_epoch: int = 10,
    epochs: int = 2,
    queue_size: int = 4096,
    num_prototypes: int = 300,
) -> ExperimentConfig:
    """An experiment of ``steps_per_epoch * batch_size`` synthetic images.

    Everything else is the main job's default (online teacher, clean-view
    backbone features, fp32); torch uses every core of the machine.
    """
    num_samples = steps_per_epoch * batch_size
    return build_config(
        {
            "name": f"bench-{method}-{student}",
            "method": method,
            "data": {
                "dataset": "synthetic",
                "synthetic_train_samples": num_samples,
                "synthetic_test_samples": 128,
                "synthetic_classes": 10,
            },
            "student": {"backbone": student},
            "teacher": {"backbone": teacher},
            "moco": {"queue_size": queue_size},
            "relation": {"num_prototypes": num_prototypes},
            "optim": {"epochs": epochs, "batch_size": batch_size},
            "eval": {
                "monitor_train_samples": min(num_samples, 512),
                "monitor_test_samples": 128,
                "baseline_random_init": False,
            },
            "runtime": {"torch_threads": os.cpu_count() or 1},
        }
    )


class StepClock:
    """Per-step timestamps from the loop's hooks.

    Args:
        batch_size: images per step (per worker).
        warmup_steps: leading steps left out (lazy initialization).
        counter: read after every step (e.g. the seconds a
            :class:`TimedRelationSource` has spent so far), so that the
            share of each timed step it accounts for can be reported.
        clock: seconds now (injectable for tests).
    """

    def __init__(
        self,
        batch_size: int,
        warmup_steps: int = 1,
        counter: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.batch_size = batch_size
        self.warmup_steps = warmup_steps
        self.counter = counter
        self.clock = clock
        self._epoch = 0
        self._steps: list[tuple[int, int, float, float]] = []

    def hooks(self) -> TrainHooks:
        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            count = self.counter() if self.counter is not None else 0.0
            self._steps.append((step, self._epoch, self.clock(), count))

        def on_epoch_end(metrics: dict[str, float], build_state) -> None:
            self._epoch += 1

        return TrainHooks(on_step=on_step, on_epoch_end=on_epoch_end)

    def intervals(self) -> list[tuple[float, float]]:
        """(seconds, counter delta) of each timed step."""
        timed = []
        for before, after in zip(self._steps, self._steps[1:], strict=False):
            if after[0] <= self.warmup_steps or after[1] != before[1]:
                continue  # warm-up, or the interval spans an epoch end
            timed.append((after[2] - before[2], after[3] - before[3]))
        return timed

    def summary(self) -> dict[str, float]:
        """Steady-state throughput of the timed steps.

        Returns:
            ``images_per_s``, ``step_seconds`` (median), ``timed_steps`` and
            ``counter_seconds_per_step`` (mean counter delta).
        """
        timed = self.intervals()
        if not timed:
            raise RuntimeError(
                f"no timed steps: {len(self._steps)} steps ran, warm-up "
                f"{self.warmup_steps}; run more steps per epoch"
            )
        seconds = [interval for interval, _ in timed]
        return {
            "images_per_s": self.batch_size * len(seconds) / sum(seconds),
            "step_seconds": statistics.median(seconds),
            "timed_steps": float(len(seconds)),
            "counter_seconds_per_step": sum(c for _, c in timed) / len(timed),
        }


class TimedRelationSource:
    """A :class:`~rekd_ray.training.relations.RelationSource` that times the
    calls the training step makes (``push``, ``refresh``, ``lookup``).

    Epoch-end calls (``sync``, ``request_clustering``) are passed through
    untimed: they are not part of a step.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.watches = {name: Stopwatch() for name in ("push", "refresh", "lookup")}

    @property
    def version(self) -> int:
        return self.inner.version

    def step_seconds(self) -> float:
        """Seconds spent so far in the calls a step makes."""
        return sum(watch.seconds for watch in self.watches.values())

    def push(self, indices: torch.Tensor, embeddings: torch.Tensor) -> None:
        with self.watches["push"]:
            self.inner.push(indices, embeddings)

    def refresh(self, wait: bool = False) -> bool:
        if wait:  # the first-prototypes wait happens between epochs
            return self.inner.refresh(wait=True)
        with self.watches["refresh"]:
            return self.inner.refresh(wait=False)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        with self.watches["lookup"]:
            return self.inner.lookup(indices)

    def sync(self) -> None:
        self.inner.sync()

    def request_clustering(self) -> None:
        self.inner.request_clustering()

    def assignments(self) -> np.ndarray | None:
        return self.inner.assignments()

    def stats(self) -> dict[str, float]:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()


def ensure_ray() -> None:
    """Use the Ray already initialized in this process, else start a local one."""
    from rekd_ray.orchestration.runner import ensure_ray as start_or_connect

    start_or_connect(None)


def new_namespace(prefix: str = "bench") -> str:
    """A fresh run namespace for the feature store and the service."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_store(namespace: str, num_samples: int, embedding_dim: int):
    """A named TeacherFeatureStore for ``namespace``, as ``rekd train`` makes."""
    from rekd_ray.orchestration.clustering_service import RAY_NAMESPACE
    from rekd_ray.orchestration.feature_store import (
        TeacherFeatureStore,
        store_actor_name,
    )

    return TeacherFeatureStore.options(
        name=store_actor_name(namespace), namespace=RAY_NAMESPACE
    ).remote(namespace, num_samples, embedding_dim)


@contextmanager
def ray_relation_source(
    config: ExperimentConfig, num_samples: int, service=None
) -> Iterator[Any]:
    """A RayRelationSource on a fresh store and the shared clustering service.

    The store is killed and the run forgotten by the service on exit.
    """
    import ray

    from rekd_ray.orchestration.clustering_service import (
        get_or_create_clustering_service,
    )
    from rekd_ray.orchestration.ray_relations import RayRelationSource

    ensure_ray()
    namespace = new_namespace()
    service = service or get_or_create_clustering_service()
    store = create_store(namespace, num_samples, config.teacher_store_dim)
    # Both actors running before any timing starts (start-up takes seconds).
    ray.get([store.stats.remote(), service.info.remote()])
    source = RayRelationSource(
        namespace,
        store,
        service,
        config.relation.num_prototypes,
        iterations=config.relation.kmeans_iterations,
        seed=config.seed,
    )
    try:
        yield source
    finally:
        try:
            source.close()
            ray.get(service.forget.remote(namespace))
        finally:
            ray.kill(store)

"""``rekd bench overhead``: what running the ReKD loop on Ray costs per step.

The same :func:`rekd_ray.training.loop.train`, config and synthetic data run
twice, one after the other:

1. in this process, with :class:`~rekd_ray.training.relations.LocalRelationSource`
   (in-memory store, synchronous faiss);
2. under Ray Train with one worker, with the TeacherFeatureStore and the
   shared ClusteringService actors behind a
   :class:`~rekd_ray.orchestration.ray_relations.RayRelationSource`, as
   ``rekd train`` runs it.

Images/s come from the step hooks, over consecutive steps of an epoch after
a warm-up (:class:`~rekd_ray.bench.workload.StepClock`). Target (the product's):
Ray / in process >= 0.95.

NOTE: not in the ratio, reported beside it: Ray and worker start-up, and
what ``rekd train`` adds at each epoch end (MLflow metrics, a checkpoint);
both are per run or per epoch, not per step. The two runs are sequential
on a shared machine, so the ratio carries its noise (+-30 % seen there).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

from rekd_ray.bench.common import BenchResult, Check, Table, timed
from rekd_ray.bench.workload import (
    StepClock,
    bench_config,
    create_store,
    ensure_ray,
    new_namespace,
)
from rekd_ray.config import ExperimentConfig, build_config
from rekd_ray.data.datasets import load_dataset
from rekd_ray.training.loop import train

__all__ = ["run"]

logger = logging.getLogger(__name__)

TARGET_RATIO = 0.95


@dataclass(frozen=True)
class Sizes:
    batch_size: int
    steps_per_epoch: int
    epochs: int
    queue_size: int
    num_prototypes: int
    warmup_steps: int


DEFAULT = Sizes(256, 10, 2, 4096, 300, warmup_steps=2)
QUICK = Sizes(64, 5, 2, 256, 16, warmup_steps=1)


def run(quick: bool = False) -> BenchResult:
    """In process vs Ray Train (one worker + actors), same loop and data."""
    sizes = QUICK if quick else DEFAULT
    config = bench_config(
        batch_size=sizes.batch_size,
        steps_per_epoch=sizes.steps_per_epoch,
        epochs=sizes.epochs,
        queue_size=sizes.queue_size,
        num_prototypes=sizes.num_prototypes,
    )
    local = _in_process(config, sizes.warmup_steps)
    logger.info("overhead: in process %.1f images/s", local["images_per_s"])
    on_ray = _under_ray_train(config, sizes.warmup_steps)
    logger.info("overhead: Ray Train %.1f images/s", on_ray["images_per_s"])
    ratio = on_ray["images_per_s"] / local["images_per_s"]

    table = Table(
        "overhead: the same ReKD loop in process and on Ray",
        ["path", "images/s", "median step s", "timed steps", "wall s"],
    )
    table.add(
        "in process (LocalRelationSource)",
        local["images_per_s"],
        local["step_seconds"],
        int(local["timed_steps"]),
        local["wall_seconds"],
    )
    table.add(
        "Ray Train, 1 worker + actors",
        on_ray["images_per_s"],
        on_ray["step_seconds"],
        int(on_ray["timed_steps"]),
        on_ray["wall_seconds"],
    )
    return BenchResult(
        name="overhead",
        quick=quick,
        params={
            **asdict(sizes),
            "student": config.student.backbone,
            "teacher": config.teacher.backbone,
            "dataset": "synthetic 28x28 -> 32 px",
            "torch_threads": config.runtime.torch_threads,
        },
        results={"in_process": local, "ray_train": on_ray, "ratio": ratio},
        checks=[
            Check("images/s ratio, Ray Train / in process", ratio, ">=", TARGET_RATIO)
        ],
        tables=[table],
        notes=[
            "wall s includes model building and epoch ends; on Ray also Ray "
            f"Train start-up ({on_ray['startup_seconds']:.1f} s here)",
        ],
    )


def _in_process(config: ExperimentConfig, warmup_steps: int) -> dict[str, float]:
    data = load_dataset(config.data, seed=config.seed)
    clock = StepClock(config.optim.batch_size, warmup_steps)
    with timed() as wall:
        train(config, data, hooks=clock.hooks())
    return {**clock.summary(), "wall_seconds": wall["seconds"]}


def _worker(loop_config: dict[str, Any]) -> dict[str, float]:
    """Runs inside the Ray Train worker: the loop with the actors, timed."""
    import ray

    from rekd_ray.orchestration.clustering_service import RAY_NAMESPACE
    from rekd_ray.orchestration.ray_relations import RayRelationSource
    from rekd_ray.training.distributed import torch_collectives

    config = build_config(loop_config["config"])
    data = load_dataset(config.data, seed=config.seed)
    source = RayRelationSource(
        loop_config["namespace"],
        ray.get_actor(loop_config["store_name"], namespace=RAY_NAMESPACE),
        ray.get_actor(loop_config["service_name"], namespace=RAY_NAMESPACE),
        config.relation.num_prototypes,
        iterations=config.relation.kmeans_iterations,
        seed=config.seed,
    )
    clock = StepClock(config.optim.batch_size, loop_config["warmup_steps"])
    start = time.perf_counter()
    try:
        train(
            config,
            data,
            relation_source=source,
            collectives=torch_collectives(),
            hooks=clock.hooks(),
        )
    finally:
        source.close()
    return {**clock.summary(), "loop_seconds": time.perf_counter() - start}


def _under_ray_train(config: ExperimentConfig, warmup_steps: int) -> dict[str, float]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rekd_ray.orchestration.clustering_service import (
        get_or_create_clustering_service,
        service_actor_name,
    )
    from rekd_ray.orchestration.feature_store import store_actor_name

    ensure_ray()
    namespace = new_namespace()
    service = get_or_create_clustering_service()
    num_samples = config.data.synthetic_train_samples
    store = create_store(namespace, num_samples, config.teacher_store_dim)
    try:
        with tempfile.TemporaryDirectory(prefix="rekd-bench-") as storage:
            trainer = TorchTrainer(
                _worker,
                train_loop_config={
                    "config": config.model_dump(mode="json"),
                    "namespace": namespace,
                    "store_name": store_actor_name(namespace),
                    "service_name": service_actor_name(),
                    "warmup_steps": warmup_steps,
                },
                scaling_config=ScalingConfig(
                    num_workers=1, resources_per_worker={"CPU": 1}
                ),
                run_config=RunConfig(name=namespace, storage_path=storage),
            )
            with timed() as wall:
                result = trainer.fit()
    finally:
        ray.get(service.forget.remote(namespace))
        ray.kill(store)
    summary = dict(result.return_value)
    summary["wall_seconds"] = wall["seconds"]
    summary["startup_seconds"] = wall["seconds"] - summary["loop_seconds"]
    return summary

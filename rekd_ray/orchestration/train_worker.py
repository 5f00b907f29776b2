"""The function every Ray Train worker runs, and the ``TorchTrainer`` around it.

Each worker loads the data, connects to the run's feature store and the shared
clustering service (by name), and runs the same :func:`rekd_ray.training.train`
as the one-process path, with:

* collectives over the gloo/nccl process group Ray Train created;
* a :class:`RayRelationSource` for teacher writes and prototype look-ups;
* hooks that post progress (rank 0), log the epoch's metrics to MLflow
  (rank 0) and call ``ray.train.report`` with a checkpoint every epoch (every
  rank: report is a barrier; only rank 0 attaches the checkpoint).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from rekd_ray.config import ExperimentConfig, build_config
from rekd_ray.data.datasets import load_dataset
from rekd_ray.orchestration.clustering_service import RAY_NAMESPACE
from rekd_ray.orchestration.ray_relations import RayRelationSource
from rekd_ray.tracking.mlflow_run import log_metrics
from rekd_ray.training.checkpoint import load_checkpoint, save_checkpoint
from rekd_ray.training.distributed import Collectives, torch_collectives
from rekd_ray.training.loop import TrainHooks, train

__all__ = ["build_trainer", "train_loop_per_worker"]

logger = logging.getLogger(__name__)

PROGRESS_EVERY_STEPS = 5


def _worker_threads(config: ExperimentConfig) -> int:
    # Ray sets OMP_NUM_THREADS from the worker's CPU reservation (1 here);
    # training should use this node's cores, shared among its workers.
    if config.runtime.torch_threads:
        return config.runtime.torch_threads
    return max(1, (os.cpu_count() or 1) // config.runtime.num_workers)


def _relation_source(config: ExperimentConfig, loop_config: dict[str, Any]):
    if not config.uses_teacher:
        return None
    return RayRelationSource(
        loop_config["namespace"],
        ray.get_actor(loop_config["store_name"], namespace=RAY_NAMESPACE),
        ray.get_actor(loop_config["service_name"], namespace=RAY_NAMESPACE),
        config.relation.num_prototypes,
        iterations=config.relation.kmeans_iterations,
        seed=config.seed,
    )


def _hooks(loop_config: dict[str, Any], collectives: Collectives) -> TrainHooks:
    board = None
    if collectives.is_main and loop_config.get("progress_name"):
        board = ray.get_actor(loop_config["progress_name"], namespace=RAY_NAMESPACE)

    def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
        if board is not None and (step % PROGRESS_EVERY_STEPS == 0 or step == total):
            board.post.remote({"step": step, "total_steps": total, **metrics})

    def on_epoch_end(metrics: dict[str, float], build_state) -> None:
        epoch = int(metrics["epoch"])
        if not collectives.is_main:
            ray.train.report(metrics, checkpoint=None)
            return
        log_metrics(loop_config["tracking_uri"], loop_config["run_id"], metrics, epoch)
        if board is not None:
            board.post.remote({"epoch_done": epoch + 1, **metrics})
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(build_state(), directory)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))

    return TrainHooks(on_step=on_step, on_epoch_end=on_epoch_end)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of each Train worker; ``loop_config`` is built by the driver."""
    config = build_config(loop_config["config"])
    torch.set_num_threads(_worker_threads(config))
    collectives = torch_collectives()
    data = load_dataset(config.data, seed=config.seed)
    relation_source = _relation_source(config, loop_config)

    resume_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume_state = load_checkpoint(directory)
    try:
        train(
            config,
            data,
            relation_source=relation_source,
            collectives=collectives,
            hooks=_hooks(loop_config, collectives),
            resume_state=resume_state,
        )
    finally:
        if relation_source is not None:
            relation_source.close()


def build_trainer(
    config: ExperimentConfig,
    loop_config: dict[str, Any],
    storage_path: str | Path,
) -> TorchTrainer:
    """A ``TorchTrainer`` for ``config`` (workers, CPU/GPU, checkpoints kept)."""
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**loop_config, "config": config.model_dump(mode="json")},
        scaling_config=ScalingConfig(
            num_workers=config.runtime.num_workers,
            use_gpu=config.runtime.use_gpu,
            resources_per_worker={"CPU": 1},
        ),
        run_config=RunConfig(
            name=loop_config["run_id"],
            storage_path=str(Path(storage_path).resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )

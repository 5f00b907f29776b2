"""The function every Ray Train worker runs, and the ``TorchTrainer`` around it.

Each worker loads the data, connects to the run's feature store and the shared
clustering service (by name), and runs the same :func:`rekd_ray.training.train`
as the one-process path, with:

* collectives over the gloo/nccl process group Ray Train created;
* a :class:`RayRelationSource` for teacher writes and prototype look-ups;
* hooks that post progress (rank 0), log the epoch's metrics to MLflow
  (rank 0) and call ``ray.train.report`` with a checkpoint every epoch (every
  rank: report is a barrier; only rank 0 attaches the checkpoint).

Restarts: a worker starts from the run directory's newest loadable
``epoch_<EEEE>`` checkpoint (``ray.train.get_checkpoint()`` only when the
directory cannot be listed here): Ray registers a reported checkpoint
asynchronously, so after a crash the directory can be one epoch ahead. The checkpoint is
persisted before the epoch's metrics go to MLflow, so a logged epoch always
has a checkpoint and is never run (nor logged) twice; an epoch checkpointed
but not logged is logged from the checkpoint's history on restart.

Errors that a restart would only repeat (a non-finite loss, bad data) are
posted to the run's ProgressBoard before they are raised; the driver then
stops the run at once instead of letting Ray retry ``runtime.max_failures``
times.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from rekd_ray.config import ExperimentConfig, build_config
from rekd_ray.data.datasets import load_dataset
from rekd_ray.orchestration.clustering_service import (
    RAY_NAMESPACE,
    clustering_service_for,
)
from rekd_ray.orchestration.devices import with_resolved_devices
from rekd_ray.orchestration.ray_relations import RayRelationSource
from rekd_ray.tracking.mlflow_run import log_metrics, logged_epochs
from rekd_ray.training.checkpoint import (
    checkpoint_dir_name,
    find_latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from rekd_ray.training.distributed import Collectives, torch_collectives
from rekd_ray.training.faults import FaultPlan
from rekd_ray.training.loop import NonFiniteLossError, TrainHooks, train

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
        ray.get_actor(
            config.teacher.features_store or loop_config["store_name"],
            namespace=RAY_NAMESPACE,
        ),
        # Get or create: the service may have died since the driver made it.
        clustering_service_for(config),
        config.relation.num_prototypes,
        iterations=config.relation.kmeans_iterations,
        seed=config.seed,
        service_factory=lambda: clustering_service_for(config),
        owns_store=config.teacher.features_store is None,
    )


def _deterministic_errors() -> tuple[type[BaseException], ...]:
    from PIL import UnidentifiedImageError

    return (
        NonFiniteLossError,
        ValueError,
        TypeError,
        LookupError,
        FileNotFoundError,
        NotImplementedError,
        UnidentifiedImageError,
    )


def _board(loop_config: dict[str, Any]):
    if not loop_config.get("progress_name"):
        return None
    return ray.get_actor(loop_config["progress_name"], namespace=RAY_NAMESPACE)


def _resume_state(loop_config: dict[str, Any]) -> dict | None:
    """The run directory's newest checkpoint (never older than the one Ray
    registered), else Ray's, for storage this process cannot list."""
    found = find_latest_checkpoint(loop_config.get("run_dir") or "")
    if found is not None:
        return found[1]
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_checkpoint(directory)


def _backfill_history(loop_config: dict[str, Any], resume_state: dict) -> set[int]:
    """Log checkpointed epochs MLflow lacks; return the epochs it has."""
    uri, run_id = loop_config["tracking_uri"], loop_config["run_id"]
    logged = logged_epochs(uri, run_id)
    for metrics in resume_state.get("history", []):
        epoch = int(metrics["epoch"])
        if epoch not in logged:
            logger.warning("epoch %d was checkpointed but not logged; logging", epoch)
            log_metrics(uri, run_id, metrics, epoch)
            logged.add(epoch)
    return logged


class StopRequested(Exception):
    """The driver asked the workers to stop (Ctrl-C); raised on every rank."""


class _StopWatch:
    """Rank 0 polls the board's ``stop`` flag without blocking; all ranks
    agree on it every step (one scalar all-reduce), so they stop together."""

    def __init__(self, board, collectives: Collectives) -> None:
        self.board = board
        self.collectives = collectives
        self._pending = None

    def requested(self) -> bool:
        local = 0.0
        if self.board is not None:
            if self._pending is None:
                self._pending = self.board.read.remote()
            ready, _ = ray.wait([self._pending], timeout=0)
            if ready:
                local = float(bool(ray.get(self._pending).get("stop")))
                self._pending = None
        # max over ranks, with the one reduction Collectives offers
        return -self.collectives.minimum(-local) > 0.0

    def requested_now(self) -> bool:
        """Rank 0 only, blocking: for its stall hook."""
        return bool(self.board and ray.get(self.board.read.remote()).get("stop"))


def _hooks(
    loop_config: dict[str, Any],
    collectives: Collectives,
    logged: set[int],
    faults: FaultPlan | None,
) -> TrainHooks:
    board = _board(loop_config) if collectives.is_main else None
    stop = _StopWatch(board, collectives)

    def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
        if board is not None and (step % PROGRESS_EVERY_STEPS == 0 or step == total):
            board.post.remote({"step": step, "total_steps": total, **metrics})
        if stop.requested():
            raise StopRequested(f"stop requested at step {step}")

    def on_epoch_end(metrics: dict[str, float], build_state) -> None:
        epoch = int(metrics["epoch"])
        # Cost: CPU time of all worker processes so far (a collective call).
        metrics["time/workers_cpu_seconds"] = (
            collectives.mean(time.process_time()) * collectives.world_size
        )
        name = checkpoint_dir_name(epoch + 1)
        if not collectives.is_main:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
            return
        # Persist first, then log: a logged epoch always has its checkpoint.
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(build_state(), directory)
            ray.train.report(
                metrics,
                checkpoint=Checkpoint.from_directory(directory),
                checkpoint_dir_name=name,
            )
        if epoch in logged:
            logger.warning("epoch %d is already in MLflow; not logged again", epoch)
        else:
            uri, run_id = loop_config["tracking_uri"], loop_config["run_id"]
            log_metrics(uri, run_id, metrics, epoch)
            logged.add(epoch)
        if board is not None:
            board.post.remote({"epoch_done": epoch + 1, **metrics})
        if faults is not None:
            faults.maybe_stall(collectives.rank, epoch + 1, stop.requested_now)

    return TrainHooks(on_step=on_step, on_epoch_end=on_epoch_end)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of each Train worker; ``loop_config`` is built by the driver."""
    board = _board(loop_config)
    if board is not None and ray.get(board.read.remote()).get("fatal"):
        # Ray restarted the group after an error that would only repeat:
        # return at once; the driver fails the run with the posted error.
        return
    try:
        _train_worker(loop_config)
    except StopRequested as stop:
        logger.warning("%s; the last epoch's checkpoint is kept", stop)
    except NonFiniteLossError as error:
        # Every rank raised at the same step (the check is collective): all
        # return, the fit ends, and the driver fails the run, no retries.
        if error.args[-1] != "peer":
            _post_fatal(board, error)
    except _deterministic_errors() as error:
        # Maybe this rank alone: raise, so Ray tears the group down; the
        # restarted workers see the fatal flag and return at once.
        _post_fatal(board, error)
        raise


def _post_fatal(board, error: BaseException) -> None:
    if board is None:
        return
    message = str(error.args[0]) if error.args else str(error)
    first_line = (message.strip().splitlines() or [""])[0]
    ray.get(board.post.remote({"fatal": f"{type(error).__name__}: {first_line}"}))


def _train_worker(loop_config: dict[str, Any]) -> None:
    config = build_config(loop_config["config"])
    torch.set_num_threads(_worker_threads(config))
    collectives = torch_collectives()
    faults = FaultPlan.from_dict(loop_config.get("faults"))
    data = load_dataset(config.data, seed=config.seed)
    relation_source = _relation_source(config, loop_config)

    resume_state = _resume_state(loop_config)
    logged: set[int] = set()
    if resume_state is not None and collectives.is_main:
        logged = _backfill_history(loop_config, resume_state)
    try:
        train(
            config,
            data,
            relation_source=relation_source,
            collectives=collectives,
            hooks=_hooks(loop_config, collectives, logged, faults),
            resume_state=resume_state,
            faults=faults,
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
    config = with_resolved_devices(config)  # workers see use_gpu as a bool
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
            failure_config=FailureConfig(max_failures=config.runtime.max_failures),
        ),
    )

"""The driver of one training run on Ray: ``rekd train`` calls :func:`run_training`.

Table of contents:

1. check the config against the data (M <= N) before anything is created;
2. connect to Ray (``address``) or start a local one;
3. create the MLflow run (params = the resolved config);
4. get the shared ClusteringService, create this run's TeacherFeatureStore
   and a ProgressBoard;
5. fit a TorchTrainer (workers log per-epoch metrics and checkpoints) while
   the caller's ``on_progress`` is fed from the board;
6. evaluate the final checkpoint (linear probe and kNN; also the random-init
   student when configured), log metrics and artifacts;
7. end the MLflow run FINISHED, or FAILED / KILLED when anything went wrong.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient

from rekd_ray.config import ConfigError, ExperimentConfig
from rekd_ray.data.datasets import ImageData, dataset_size, load_dataset
from rekd_ray.models.backbones import build_backbone
from rekd_ray.orchestration.clustering_service import (
    RAY_NAMESPACE,
    get_or_create_clustering_service,
    service_actor_name,
)
from rekd_ray.orchestration.feature_store import TeacherFeatureStore, store_actor_name
from rekd_ray.orchestration.progress import ProgressBoard
from rekd_ray.orchestration.train_worker import build_trainer
from rekd_ray.tracking.mlflow_run import (
    end_run,
    log_metrics,
    resolve_tracking_uri,
    start_run,
)
from rekd_ray.tracking.plots import plot_curves
from rekd_ray.training.checkpoint import load_checkpoint
from rekd_ray.training.evaluate import final_evaluation

__all__ = [
    "RunFailedError",
    "RunSummary",
    "check_against_data",
    "evaluate_checkpoint",
    "run_training",
]

logger = logging.getLogger(__name__)


class RunFailedError(RuntimeError):
    """Training or evaluation failed; the MLflow run was marked FAILED.

    Attributes:
        run_id: the MLflow run.
    """

    def __init__(self, run_id: str, cause: BaseException) -> None:
        first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        super().__init__(
            f"run {run_id} failed ({type(cause).__name__}: {first_line}); "
            "it is marked FAILED in MLflow"
        )
        self.run_id = run_id


@dataclass
class RunSummary:
    """What ``rekd train`` prints (table or ``--json``). Accuracies in percent."""

    run_id: str
    method: str
    student: str
    teacher: str | None
    num_prototypes: int | None
    linear_top1: float
    knn_top1: float
    random_init_linear_top1: float | None
    random_init_knn_top1: float | None
    epochs: int
    wall_seconds: float
    tracking_uri: str
    checkpoint: str
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        summary = asdict(self)
        summary.pop("history")
        return summary


def check_against_data(config: ExperimentConfig) -> int:
    """Validate what needs the data's size; returns N.

    Raises:
        ConfigError: M > N, or a batch larger than one worker's shard.
    """
    try:
        num_samples = dataset_size(config.data)
    except FileNotFoundError as error:
        raise ConfigError(f"data.root: {error}") from None
    except ValueError as error:  # a subset larger than its split
        raise ConfigError(str(error)) from None
    if config.teacher.kind.value == "offline" and config.uses_teacher:
        checkpoint = Path(config.teacher.checkpoint or "")
        if not (checkpoint.is_file() or (checkpoint / "checkpoint.pt").is_file()):
            raise ConfigError(
                f"teacher.checkpoint: {str(checkpoint)!r} is not a checkpoint.pt "
                "(or a directory holding one) written by rekd train"
            )
    if config.uses_teacher and config.relation.num_prototypes > num_samples:
        raise ConfigError(
            f"relation.num_prototypes: M={config.relation.num_prototypes} is "
            f"larger than the {num_samples} training samples; choose M <= "
            f"{num_samples}"
        )
    per_worker = num_samples // config.runtime.num_workers
    if config.optim.batch_size > per_worker:
        raise ConfigError(
            f"optim.batch_size: {config.optim.batch_size} exceeds the "
            f"{per_worker} samples each of {config.runtime.num_workers} "
            "worker(s) gets; lower the batch"
        )
    return num_samples


def check_local_resources(config: ExperimentConfig, address: str | None) -> None:
    """On a local Ray, every Train worker needs a CPU (and a GPU if asked).

    Raises:
        ConfigError: more workers than this machine can place; Ray would wait
            for them forever. A cluster (``address``) may autoscale: not checked.
    """
    if address:
        return
    cpus = os.cpu_count() or 1
    if config.runtime.num_workers > cpus:
        raise ConfigError(
            f"runtime.num_workers: {config.runtime.num_workers} workers need one "
            f"CPU each; this machine has {cpus}. Lower it, or pass --address to "
            "use a Ray cluster"
        )
    if config.runtime.use_gpu:
        import torch

        if torch.cuda.device_count() < config.runtime.num_workers:
            raise ConfigError(
                f"runtime.use_gpu: {config.runtime.num_workers} workers need one "
                f"GPU each; torch sees {torch.cuda.device_count()}. Set "
                "runtime.use_gpu=false or lower runtime.num_workers"
            )


def ensure_ray(address: str | None) -> None:
    """Connect to ``address`` or start a local Ray (dashboard off, loopback)."""
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, namespace=RAY_NAMESPACE, **quiet)
    else:
        ray.init(
            num_cpus=os.cpu_count(),
            namespace=RAY_NAMESPACE,
            include_dashboard=False,
            **quiet,
        )


def _terminate_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"received signal {signum}")


def _treat_sigterm_as_interrupt() -> None:
    # A `kill` (or a scheduler's preemption) must end the MLflow run KILLED,
    # like Ctrl-C. Installed after ray.init, which sets its own SIGTERM handler
    # that would exit as a failure.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)


def run_training(
    config: ExperimentConfig,
    *,
    tracking_uri: str | None = None,
    address: str | None = None,
    on_progress: Callable[[dict[str, float]], None] | None = None,
) -> RunSummary:
    """Train ``config`` on Ray, evaluate it and log everything to MLflow."""
    check_local_resources(config, address)
    num_samples = check_against_data(config)
    tracking_uri = resolve_tracking_uri(tracking_uri)
    start = time.perf_counter()
    ensure_ray(address)
    _treat_sigterm_as_interrupt()
    run_id = start_run(config, tracking_uri)
    actors = []
    try:
        service = get_or_create_clustering_service()
        store = TeacherFeatureStore.options(
            name=store_actor_name(run_id), namespace=RAY_NAMESPACE
        ).remote(run_id, num_samples, config.teacher_store_dim)
        board = ProgressBoard.options(
            name=f"rekd-progress-{run_id}", namespace=RAY_NAMESPACE
        ).remote()
        actors = [store, board]
        loop_config = {
            "run_id": run_id,
            "namespace": run_id,
            "tracking_uri": tracking_uri,
            "store_name": store_actor_name(run_id),
            "service_name": service_actor_name(),
            "progress_name": f"rekd-progress-{run_id}",
        }
        trainer = build_trainer(config, loop_config, config.runtime.storage_path)
        result = _fit_with_progress(trainer, board, on_progress)
        summary = _finish(config, run_id, tracking_uri, result, start)
        ray.get(service.forget.remote(run_id))
    except KeyboardInterrupt:
        end_run(tracking_uri, run_id, "KILLED")
        raise
    except BaseException as error:
        end_run(tracking_uri, run_id, "FAILED")
        raise RunFailedError(run_id, error) from error
    finally:
        for actor in actors:
            ray.kill(actor)
    end_run(tracking_uri, run_id, "FINISHED")
    return summary


def _fit_with_progress(trainer, board, on_progress):
    """Run ``trainer.fit()`` in a thread; feed ``on_progress`` meanwhile."""
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
        if on_progress is not None:
            on_progress(ray.get(board.read.remote()))
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def evaluate_checkpoint(
    config: ExperimentConfig,
    checkpoint: dict,
    data: ImageData | None = None,
    *,
    include_random_init: bool = False,
) -> dict[str, float]:
    """Linear and kNN top-1 (fractions) of a checkpoint's student backbone."""
    data = data or load_dataset(config.data, seed=config.seed)
    backbone = build_backbone(
        config.student.backbone, image_size=config.data.image_size
    )
    prefix = _student_backbone_prefix(checkpoint["method"])
    backbone.load_state_dict(
        {
            key[len(prefix) :]: value
            for key, value in checkpoint["method"].items()
            if key.startswith(prefix)
        }
    )
    metrics = final_evaluation(backbone, data, config)
    if include_random_init and checkpoint.get("student_backbone_init"):
        backbone.load_state_dict(checkpoint["student_backbone_init"])
        baseline = final_evaluation(backbone, data, config)
        metrics.update({f"random_init_{k}": v for k, v in baseline.items()})
    return metrics


def _student_backbone_prefix(method_state: dict) -> str:
    for prefix in ("student.query_encoder.backbone.", "backbone."):
        if any(key.startswith(prefix) for key in method_state):
            return prefix
    raise ValueError("checkpoint holds no student backbone")


def _finish(config, run_id, tracking_uri, result, start) -> RunSummary:
    """Final evaluation, metrics and artifacts of a fitted run."""
    checkpoint_dir = result.checkpoint.path
    checkpoint = load_checkpoint(checkpoint_dir)
    history = checkpoint["history"]
    metrics = evaluate_checkpoint(
        config, checkpoint, include_random_init=config.eval.baseline_random_init
    )
    wall = time.perf_counter() - start
    final = {f"final/{k}": v for k, v in metrics.items()}
    final["final/wall_seconds"] = wall
    log_metrics(tracking_uri, run_id, final, step=len(history))
    _log_artifacts(config, run_id, tracking_uri, checkpoint, history)
    percent = {k: 100.0 * v for k, v in metrics.items()}
    return RunSummary(
        run_id=run_id,
        method=config.method.value,
        student=config.student.backbone,
        teacher=config.teacher.backbone if config.uses_teacher else None,
        num_prototypes=config.relation.num_prototypes if config.uses_teacher else None,
        linear_top1=percent["linear_top1"],
        knn_top1=percent["knn_top1"],
        random_init_linear_top1=percent.get("random_init_linear_top1"),
        random_init_knn_top1=percent.get("random_init_knn_top1"),
        epochs=len(history),
        wall_seconds=wall,
        tracking_uri=tracking_uri,
        checkpoint=str(checkpoint_dir),
        history=history,
    )


def _log_artifacts(config, run_id, tracking_uri, checkpoint, history) -> None:
    import torch

    client = MlflowClient(tracking_uri)
    prefix = _student_backbone_prefix(checkpoint["method"])
    backbone_state = {
        key[len(prefix) :]: value
        for key, value in checkpoint["method"].items()
        if key.startswith(prefix)
    }
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        (directory / "config.json").write_text(
            json.dumps(config.model_dump(mode="json"), indent=2)
        )
        torch.save(backbone_state, directory / "student_backbone.pt")
        (directory / "history.jsonl").write_text(
            "".join(json.dumps(row) + "\n" for row in history)
        )
        plot_curves(history, directory / "curves.png", title=config.name)
        for name in (
            "config.json",
            "student_backbone.pt",
            "history.jsonl",
            "curves.png",
        ):
            client.log_artifact(run_id, str(directory / name))

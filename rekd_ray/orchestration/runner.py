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

``resume`` (``rekd train --resume``) reopens an existing MLflow run instead
of step 3; the workers continue from its newest checkpoint (see
``orchestration.resume`` and ``orchestration.train_worker``). Interrupts and
fatal worker errors are handled by ``orchestration.fit_control``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
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
    clustering_service_for,
    service_actor_name,
)
from rekd_ray.orchestration.devices import check_faiss_install, with_resolved_devices
from rekd_ray.orchestration.feature_store import TeacherFeatureStore, store_actor_name
from rekd_ray.orchestration.fit_control import fit_under_control
from rekd_ray.orchestration.progress import ProgressBoard
from rekd_ray.orchestration.resume import RUN_DIR_TAG, ResumePoint
from rekd_ray.orchestration.train_worker import build_trainer
from rekd_ray.paths import check_output_dir
from rekd_ray.tracking.mlflow_run import (
    end_run,
    log_metrics,
    reopen_run,
    resolve_tracking_uri,
    start_run,
)
from rekd_ray.tracking.plots import plot_curves
from rekd_ray.training.checkpoint import find_latest_checkpoint, load_checkpoint
from rekd_ray.training.evaluate import final_evaluation
from rekd_ray.training.faults import FaultPlan

__all__ = [
    "RunFailedError",
    "RunSummary",
    "check_address",
    "check_against_data",
    "check_local_resources",
    "check_offline_teacher",
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
        check_offline_teacher(config)
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


def check_offline_teacher(config: ExperimentConfig) -> None:
    """The frozen teacher's checkpoint exists and its student fits ``teacher.*``.

    Raises:
        ConfigError: no checkpoint, or one whose trained student differs from
            what this config builds as the teacher (checked before any worker
            starts, where a load error would only surface after retries).
    """
    from rekd_ray.training.checkpoint import load_checkpoint

    path = Path(config.teacher.checkpoint or "")
    try:
        saved = load_checkpoint(path)["config"]
        saved_student, saved_moco = saved["student"], saved["moco"]
        saved_image_size = saved["data"]["image_size"]
    except (FileNotFoundError, ValueError, KeyError, TypeError, IndexError) as error:
        raise ConfigError(
            f"teacher.checkpoint: {str(path)!r} is not a checkpoint.pt "
            f"(or a directory holding one) written by rekd train ({error})"
        ) from None
    if saved.get("method") == "supervised":
        raise ConfigError(
            "teacher.checkpoint: a supervised run has no MoCo encoders; take "
            "the checkpoint of a mocov2, rekd or response run"
        )
    wanted = {
        "teacher.backbone": (saved_student["backbone"], config.teacher.backbone),
        "teacher.projection_dim": (
            saved_student["projection_dim"],
            config.teacher.projection_dim,
        ),
        "teacher.projection_hidden_dim": (
            saved_student["projection_hidden_dim"],
            config.teacher.projection_hidden_dim,
        ),
        "moco.queue_size": (saved_moco["queue_size"], config.moco.queue_size),
        "data.image_size": (saved_image_size, config.data.image_size),
    }
    for key, (trained, configured) in wanted.items():
        if trained != configured:
            raise ConfigError(
                f"{key}: the teacher checkpoint was trained with {trained!r}, "
                f"this config has {configured!r}; set {key}={trained}"
            )


def check_local_resources(config: ExperimentConfig, address: str | None) -> None:
    """On a local Ray, every Train worker needs a CPU (and a GPU if asked).

    Raises:
        ConfigError: more workers (or clustering GPUs or custom resources)
            than this machine can place; Ray would wait for them forever. A
            cluster (``address``) may autoscale: not checked. Also, anywhere:
            faiss missing or both its builds installed, or a
            ``runtime.storage_path`` that cannot be written.
    """
    check_faiss_install(config)
    check_output_dir(Path(config.runtime.storage_path), "runtime.storage_path")
    if address:
        return
    _check_local_clustering(config)
    cpus = os.cpu_count() or 1
    if config.runtime.num_workers > cpus:
        raise ConfigError(
            f"runtime.num_workers: {config.runtime.num_workers} workers need one "
            f"CPU each; this machine has {cpus}. Lower it, or pass --address to "
            "use a Ray cluster"
        )
    if config.runtime.use_gpu:  # None (auto) falls back to CPUs
        import torch

        if torch.cuda.device_count() < config.runtime.num_workers:
            raise ConfigError(
                f"runtime.use_gpu: {config.runtime.num_workers} workers need one "
                f"GPU each; torch sees {torch.cuda.device_count()}. Set "
                "runtime.use_gpu=false or lower runtime.num_workers"
            )


def _check_local_clustering(config: ExperimentConfig) -> None:
    """The clustering service's GPUs and custom resources exist locally.

    A local Ray has no custom resources and as many GPUs as torch sees; an
    actor asking for more would wait for them forever.
    """
    runtime = config.runtime
    if runtime.clustering_resources:
        names = ", ".join(sorted(runtime.clustering_resources))
        raise ConfigError(
            f"runtime.clustering_resources: a local Ray has no custom resources "
            f"({names}); leave it empty here, or pass --address of a cluster "
            "whose nodes define them"
        )
    if runtime.clustering_gpus > 0:
        import torch

        if runtime.clustering_gpus > torch.cuda.device_count():
            raise ConfigError(
                f"runtime.clustering_gpus: {runtime.clustering_gpus:g} GPU(s) "
                f"asked, torch sees {torch.cuda.device_count()}; set "
                "runtime.clustering_gpus=0 (or pass --cpu)"
            )


# host:port, [v6]:port, or a ray:// client address.
_ADDRESS = re.compile(r"^(ray://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):\d{1,5}$")


def check_address(address: str | None) -> None:
    """``--address`` is empty (local Ray), ``auto``, ``local``, or HOST:PORT.

    Raises:
        ConfigError: anything else, before Ray tries to connect to it.
    """
    if address is None or address in ("auto", "local"):
        return
    match = _ADDRESS.match(address)
    if match is None or not 0 < int(address.rsplit(":", 1)[1]) < 65536:
        raise ConfigError(
            f"--address: {address!r} is not a Ray address; use auto (the "
            "cluster this machine belongs to), HOST:PORT of the head (e.g. "
            "10.0.0.1:6379) or ray://HOST:10001, or leave it out for a local Ray"
        )
    host, port = match.group(2).strip("[]"), int(address.rsplit(":", 1)[1])
    try:  # Ray itself would retry a dead address for minutes
        socket.create_connection((host, port), timeout=5.0).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"--address: nothing listens at {host}:{port} ({reason}); start the "
            "head with `ray start --head` or check the address"
        ) from None


def ensure_ray(address: str | None) -> None:
    """Connect to ``address`` or start a local Ray (dashboard off, loopback).

    Ray's token authentication (on by default for local clusters since 2.5x)
    is left as it is; a warning says so when the environment turned it off.
    """
    if ray.is_initialized():
        return
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        logger.warning(
            "RAY_AUTH_MODE=disabled: Ray's token authentication is off; any "
            "process that reaches this machine's Ray ports can run code here"
        )
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, namespace=RAY_NAMESPACE, **quiet)
    else:
        ray.init(
            num_cpus=os.cpu_count(),
            namespace=RAY_NAMESPACE,
            include_dashboard=False,
            # Should anyone turn the dashboard on: loopback only.
            dashboard_host="127.0.0.1",
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
    parent_run_id: str | None = None,
    resume: ResumePoint | None = None,
) -> RunSummary:
    """Train ``config`` on Ray, evaluate it and log everything to MLflow.

    ``parent_run_id`` makes the MLflow run a child of that run (a sweep's).
    ``resume`` (from :func:`rekd_ray.orchestration.resume.prepare_resume`)
    continues that run in the same MLflow run; ``config`` is then its config.
    """
    check_local_resources(config, address)
    num_samples = check_against_data(config)
    tracking_uri = resolve_tracking_uri(tracking_uri)
    faults = FaultPlan.from_env()
    start = time.perf_counter()
    ensure_ray(address)
    _treat_sigterm_as_interrupt()
    config = with_resolved_devices(config)  # before MLflow logs the config
    run_id = _open_run(config, tracking_uri, parent_run_id, resume)
    run_dir = Path(config.runtime.storage_path).resolve() / run_id
    actors = []
    try:
        clustering_service_for(config)
        store = _create_named(
            TeacherFeatureStore,
            store_actor_name(run_id),
            run_id,
            num_samples,
            config.teacher_store_dim,
            str(run_dir),
        )
        actors.append(store)
        board = _create_named(ProgressBoard, f"rekd-progress-{run_id}")
        actors.append(board)
        loop_config = {
            "run_id": run_id,
            "namespace": run_id,
            "tracking_uri": tracking_uri,
            "store_name": store_actor_name(run_id),
            "service_name": service_actor_name(),
            "progress_name": f"rekd-progress-{run_id}",
            "run_dir": str(run_dir),
            "faults": None if faults is None else faults.to_dict(),
        }
        trainer = build_trainer(config, loop_config, config.runtime.storage_path)
        result = fit_under_control(trainer, board, on_progress, faults)
        summary = _finish(config, run_id, tracking_uri, result, start, run_dir)
    except KeyboardInterrupt:
        end_run(tracking_uri, run_id, "KILLED")
        raise
    except BaseException as error:
        end_run(tracking_uri, run_id, "FAILED")
        raise RunFailedError(run_id, error) from error
    finally:
        for actor in actors:
            ray.kill(actor)
        _forget(run_id)
    end_run(tracking_uri, run_id, "FINISHED")
    return summary


def _open_run(config, tracking_uri, parent_run_id, resume) -> str:
    """A new MLflow run (tagged with its checkpoint directory), or the
    resumed one set back to RUNNING."""
    if resume is not None:
        reopen_run(tracking_uri, resume.run_id)
        return resume.run_id
    run_id = start_run(config, tracking_uri, parent_run_id=parent_run_id)
    run_dir = Path(config.runtime.storage_path).resolve() / run_id
    MlflowClient(tracking_uri).set_tag(run_id, RUN_DIR_TAG, str(run_dir))
    return run_id


def _create_named(actor_class, name: str, *args, attempts: int = 50):
    """Create a named actor; retry while a killed one still holds the name."""
    for attempt in range(attempts):
        try:
            return actor_class.options(name=name, namespace=RAY_NAMESPACE).remote(*args)
        except ValueError:  # the name is taken: a kill not processed yet
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)


def _forget(run_id: str) -> None:
    # The service may have died and been re-created meanwhile: look it up.
    try:
        service = ray.get_actor(service_actor_name(), namespace=RAY_NAMESPACE)
        ray.get(service.forget.remote(run_id))
    except (ValueError, ray.exceptions.RayActorError) as error:
        logger.warning(
            "could not drop run %s from the clustering service: %s", run_id, error
        )


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


def _final_checkpoint(result, run_dir: Path) -> tuple[str, dict]:
    """The newest checkpoint: the run directory's, else what Ray reports."""
    found = find_latest_checkpoint(run_dir)
    if found is not None:
        return str(found[0]), found[1]
    if result.checkpoint is None:
        raise RuntimeError(f"the run left no checkpoint in {run_dir}")
    return result.checkpoint.path, load_checkpoint(result.checkpoint.path)


def _finish(config, run_id, tracking_uri, result, start, run_dir) -> RunSummary:
    """Final evaluation, metrics and artifacts of a fitted run."""
    checkpoint_dir, checkpoint = _final_checkpoint(result, run_dir)
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

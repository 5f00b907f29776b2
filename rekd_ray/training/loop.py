"""The training loop shared by the one-process path and Ray Train workers.

:func:`train` reads as a table of contents: build the loader, the method and
the optimizers, optionally restore a checkpoint, then per epoch
:func:`train_one_epoch`, re-cluster, monitor and hand the epoch's metrics (and
a way to build a checkpoint) to the caller's hooks. Everything that differs
between one process and Ray (collectives, the relation source, reporting and
checkpoint storage) is injected.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from rekd_ray.config import ExperimentConfig
from rekd_ray.data.augment import TwoViewAugmentation
from rekd_ray.data.datasets import ImageData, PretrainDataset, pretrain_loader
from rekd_ray.tracking.meters import MetricMeters
from rekd_ray.training.checkpoint import git_sha
from rekd_ray.training.distributed import SINGLE_PROCESS, Collectives
from rekd_ray.training.evaluate import monitor_knn, prototype_quality
from rekd_ray.training.faults import FaultPlan
from rekd_ray.training.methods import TrainingMethod, build_method
from rekd_ray.training.relations import LocalRelationSource, RelationSource
from rekd_ray.training.rng import capture_rng, restore_rng

__all__ = ["NonFiniteLossError", "TrainHooks", "TrainResult", "train"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run must stop."""


@dataclass
class TrainHooks:
    """Callbacks of the caller (all optional).

    Attributes:
        on_step: ``(global_step, total_steps, step_metrics)`` after each step.
        on_epoch_end: ``(epoch_metrics, build_checkpoint_state)`` after each
            epoch; ``build_checkpoint_state()`` returns the checkpoint dict.
    """

    on_step: Callable[[int, int, dict[str, float]], None] | None = None
    on_epoch_end: Callable[[dict[str, float], Callable[[], dict]], None] | None = None


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    method: TrainingMethod
    relation_source: RelationSource | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_loader(
    config: ExperimentConfig, data: ImageData, collectives: Collectives
) -> tuple[DataLoader, DistributedSampler]:
    """Two-view loader over this worker's shard of the training set."""
    augmentation = TwoViewAugmentation(
        config.data.image_size, mean=data.mean, std=data.std
    )
    dataset = PretrainDataset(data.train_images, augmentation)
    sampler = DistributedSampler(
        dataset,
        num_replicas=collectives.world_size,
        rank=collectives.rank,
        shuffle=True,
        seed=config.seed,
        drop_last=True,
    )
    loader = pretrain_loader(
        dataset,
        config.optim.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=config.data.loader_workers,
    )
    if len(loader) == 0:
        raise ValueError(
            f"optim.batch_size ({config.optim.batch_size}) is larger than the "
            f"{len(sampler)} training samples of one worker; lower the batch"
        )
    return loader, sampler


def training_device(config: ExperimentConfig) -> torch.device:
    """The GPU Ray Train assigned when ``runtime.use_gpu``, else the CPU.

    ``use_gpu`` null (auto; only seen outside Ray Train, where the driver
    resolves it) takes the current CUDA device when torch sees one.
    """
    use_gpu = config.runtime.use_gpu
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    if use_gpu:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "runtime.use_gpu=true but torch sees no CUDA device; "
                "set runtime.use_gpu=false"
            )
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def build_optimizers(
    method: TrainingMethod, config: ExperimentConfig
) -> dict[str, torch.optim.Optimizer]:
    return {
        name: torch.optim.SGD(
            parameters,
            lr=config.optim.lr,
            momentum=config.optim.sgd_momentum,
            weight_decay=config.optim.weight_decay,
        )
        for name, parameters in method.parameter_groups().items()
    }


def learning_rate(config: ExperimentConfig, step: int, total_steps: int) -> float:
    """Linear warm-up for ``warmup_epochs``, then cosine decay to zero."""
    warmup = total_steps * config.optim.warmup_epochs // config.optim.epochs
    if step < warmup:
        return config.optim.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.optim.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _check_finite(
    loss: torch.Tensor, step: int, epoch: int, collectives: Collectives
) -> None:
    # Every rank learns whether any rank's loss broke (one scalar
    # all-reduce), so that all of them stop at this step together.
    value = loss.item()
    all_finite = collectives.minimum(1.0 if math.isfinite(value) else 0.0)
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"non-finite loss {value} at step {step} (epoch {epoch}); stopping"
        )
    if all_finite < 1.0:
        raise NonFiniteLossError(
            f"another worker's loss became non-finite at step {step}; stopping",
            "peer",
        )


@dataclass
class _LoopState:
    epoch: int = 0
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    # The student backbone before training: the random-init baseline.
    initial_backbone: dict[str, torch.Tensor] = field(default_factory=dict)
    faults: FaultPlan | None = None


def train_one_epoch(
    method: TrainingMethod,
    loader: DataLoader,
    optimizers: dict[str, torch.optim.Optimizer],
    state: _LoopState,
    config: ExperimentConfig,
    collectives: Collectives,
    relation_source: RelationSource | None,
    hooks: TrainHooks,
) -> dict[str, float]:
    """One pass over the loader; returns the epoch's averaged step metrics."""
    method.train()
    meters = MetricMeters()
    total_steps = config.optim.epochs * len(loader)
    use_bf16 = config.runtime.precision == "bf16"
    recluster_every = config.relation.recluster_every_steps
    device = next(method.parameters()).device
    for view_1, view_2, indices in loader:
        view_1, view_2 = view_1.to(device), view_2.to(device)
        indices = indices.to(device)
        lr = learning_rate(config, state.global_step, total_steps)
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        if relation_source is not None:
            relation_source.refresh(wait=False)

        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            output = method.step(view_1, view_2, indices)
        if state.faults is not None:
            if state.faults.nan_now(state.global_step):
                output.loss = output.loss * float("nan")
            state.faults.maybe_kill(collectives.rank, state.global_step)
        _check_finite(output.loss, state.global_step, state.epoch, collectives)
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        for optimizer in optimizers.values():
            params = [p for group in optimizer.param_groups for p in group["params"]]
            collectives.average_gradients(params)
            optimizer.step()
        method.after_step()

        state.global_step += 1
        meters.update({"loss": output.loss.item(), **output.metrics}, len(indices))
        if (
            per_step_store(method, relation_source, config)
            and recluster_every
            and state.global_step % recluster_every == 0
            and collectives.is_main
        ):
            relation_source.request_clustering()
        if hooks.on_step is not None:
            hooks.on_step(state.global_step, total_steps, {**meters.last, "lr": lr})
    return meters.synced(collectives)


def _fill_store_and_cluster(
    method: TrainingMethod, relation_source: RelationSource, collectives: Collectives
) -> float:
    # One teacher state per clustering: the whole training set, embedded now.
    start = time.perf_counter()
    method.fill_store(collectives.rank, collectives.world_size)
    relation_source.sync()
    collectives.barrier()  # every worker's rows land before the clustering
    if collectives.is_main:
        relation_source.request_clustering()
    return time.perf_counter() - start


def _prototypes_before_epoch(
    method: TrainingMethod,
    relation_source: RelationSource | None,
    config: ExperimentConfig,
    collectives: Collectives,
    epoch: int,
) -> tuple[float, float]:
    """Refill the store and request a clustering (``store_updates=epoch``);
    wait only for the very first prototypes. Returns (pass, wait) seconds."""
    if relation_source is None or not method.uses_prototypes:
        return 0.0, 0.0
    pass_seconds, requested = 0.0, epoch > 0
    if config.relation.store_updates == "epoch" and method.needs_store_pass():
        pass_seconds = _fill_store_and_cluster(method, relation_source, collectives)
        requested = True
        if config.relation.sync_clustering:
            wait = _wait_for_epoch_clustering(relation_source, collectives)
            return pass_seconds, wait
    # Training never waits for clustering, except for the very first result.
    if relation_source.version > 0 or not requested:
        return pass_seconds, 0.0
    start = time.perf_counter()
    relation_source.refresh(wait=True)
    return pass_seconds, time.perf_counter() - start


def _wait_for_epoch_clustering(
    relation_source: RelationSource, collectives: Collectives
) -> float:
    # relation.sync_clustering: every worker takes the epoch's prototypes
    # before the checkpoint, so what a run does never depends on timing.
    collectives.barrier()  # the request is queued before anyone waits
    start = time.perf_counter()
    relation_source.refresh(wait=True)
    return time.perf_counter() - start


def per_step_store(
    method: TrainingMethod,
    relation_source: RelationSource | None,
    config: ExperimentConfig,
) -> bool:
    """Whether steps write the store and clusterings follow steps or epoch ends
    (``relation.store_updates=step``) rather than each epoch's store pass."""
    return (
        relation_source is not None
        and method.uses_prototypes
        and config.relation.store_updates == "step"
    )


def _epoch_metrics(
    state: _LoopState,
    train_metrics: dict[str, float],
    seconds: float,
    wait_seconds: float,
    pass_seconds: float,
    relation_source: RelationSource | None,
) -> dict[str, float]:
    metrics = {"epoch": float(state.epoch)}
    metrics.update({f"train/{name}": value for name, value in train_metrics.items()})
    metrics["time/epoch_seconds"] = seconds
    metrics["time/prototype_wait_seconds"] = wait_seconds
    if pass_seconds:
        metrics["time/teacher_pass_seconds"] = pass_seconds
    if relation_source is not None:
        stats = relation_source.stats()
        for name, value in stats.items():
            prefix = "time" if name.endswith("seconds") else "kd"
            if name != "prototype_wait_seconds":
                metrics[f"{prefix}/{name}"] = value
    return metrics


def _default_relation_source(
    config: ExperimentConfig, data: ImageData
) -> RelationSource | None:
    if not config.uses_teacher:
        return None
    return LocalRelationSource(
        data.num_train,
        config.teacher_store_dim,
        config.relation.num_prototypes,
        iterations=config.relation.kmeans_iterations,
        seed=config.seed,
    )


def train(
    config: ExperimentConfig,
    data: ImageData,
    *,
    relation_source: RelationSource | None = None,
    collectives: Collectives = SINGLE_PROCESS,
    hooks: TrainHooks | None = None,
    resume_state: dict | None = None,
    faults: FaultPlan | None = None,
) -> TrainResult:
    """Train ``config.method`` on ``data``; return the per-epoch metrics.

    Args:
        config: the validated experiment.
        data: images and labels (train labels are used only by the
            ``supervised`` method and by the diagnostics).
        relation_source: teacher store + clustering; in process by default.
        collectives: rank, world size and gradient averaging.
        hooks: per-step and per-epoch callbacks (progress, report, checkpoint).
        resume_state: a loaded checkpoint to continue from: weights,
            optimizers, queues, step (hence the learning-rate schedule), RNG
            and the relation source's prototypes and store table.
        faults: test-only fault injection (see ``rekd_ray.training.faults``).

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
    """
    hooks = hooks or TrainHooks()
    if config.runtime.torch_threads:
        torch.set_num_threads(config.runtime.torch_threads)
    # The same seed on every rank: identical initial weights and queues, so
    # data-parallel replicas start equal (augmentations are seeded per rank).
    torch.manual_seed(config.seed)
    if relation_source is None:
        relation_source = _default_relation_source(config, data)
    loader, sampler = build_loader(config, data, collectives)
    method = build_method(
        config, data, relation_source=relation_source, collectives=collectives
    )
    method.to(training_device(config))
    optimizers = build_optimizers(method, config)
    state = _LoopState(faults=faults)
    state.initial_backbone = {
        name: tensor.detach().clone()
        for name, tensor in method.student_backbone().state_dict().items()
    }
    if resume_state is not None:
        _restore(resume_state, method, optimizers, state)
        if relation_source is not None and "relation" in resume_state:
            relation_source.load_state_dict(
                resume_state["relation"], shared=collectives.is_main
            )
            collectives.barrier()  # the shared actors are refilled first
        restore_rng(resume_state.get("rng_all", {}))

    while state.epoch < config.optim.epochs:
        start = time.perf_counter()
        pass_seconds, wait_seconds = _prototypes_before_epoch(
            method, relation_source, config, collectives, state.epoch
        )
        sampler.set_epoch(state.epoch)
        # Augmentations depend on (seed, epoch, rank) only: resumable.
        torch.manual_seed(
            config.seed * 100_003 + state.epoch * 1_009 + collectives.rank
        )
        train_metrics = train_one_epoch(
            method, loader, optimizers, state, config, collectives,
            relation_source, hooks,
        )  # fmt: skip
        if per_step_store(method, relation_source, config):
            # Every worker's embeddings land before the epoch's clustering.
            relation_source.sync()
            collectives.barrier()
            if collectives.is_main:
                relation_source.request_clustering()
            if config.relation.sync_clustering:
                wait_seconds += _wait_for_epoch_clustering(relation_source, collectives)
        metrics = _epoch_metrics(
            state, train_metrics, time.perf_counter() - start, wait_seconds,
            pass_seconds, relation_source,
        )  # fmt: skip
        if relation_source is not None:
            # Every worker must hold prototypes: report the laggard's version.
            metrics["kd/prototype_version_min_worker"] = collectives.minimum(
                float(relation_source.version)
            )
        if collectives.is_main:
            metrics.update(_diagnostics(method, data, config, relation_source))
        state.epoch += 1
        state.history.append(metrics)
        logger.info(_epoch_line(metrics))
        if hooks.on_epoch_end is not None:
            hooks.on_epoch_end(
                metrics,
                lambda: _checkpoint_state(
                    config, method, optimizers, state, relation_source
                ),
            )
    return TrainResult(state.history, method, relation_source)


def _diagnostics(method, data, config, relation_source) -> dict[str, float]:
    start = time.perf_counter()
    metrics = {"val/knn_top1": monitor_knn(method.student_backbone(), data, config)}
    if relation_source is not None:
        quality = prototype_quality(relation_source.assignments(), data.train_labels)
        metrics.update({f"kd/{name}": value for name, value in quality.items()})
    metrics["time/monitor_seconds"] = time.perf_counter() - start
    return metrics


def _epoch_line(metrics: dict[str, float]) -> str:
    shown = ("train/loss", "val/knn_top1", "kd/prototype_nmi", "time/epoch_seconds")
    parts = [f"epoch={int(metrics['epoch'])}"]
    parts += [f"{name}={metrics[name]:.4f}" for name in shown if name in metrics]
    return " ".join(parts)


def _checkpoint_state(config, method, optimizers, state, relation_source) -> dict:
    assignments = None if relation_source is None else relation_source.assignments()
    return {
        "config": config.model_dump(mode="json"),
        "epoch": state.epoch,
        "global_step": state.global_step,
        "method": method.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "prototype_version": 0 if relation_source is None else relation_source.version,
        "assignments": None if assignments is None else torch.from_numpy(assignments),
        "rng": torch.get_rng_state(),
        "rng_all": capture_rng(),
        "relation": None if relation_source is None else relation_source.state_dict(),
        "git_sha": git_sha(),
        "history": list(state.history),
        "student_backbone_init": state.initial_backbone,
    }


def _restore(checkpoint: dict, method, optimizers, state: _LoopState) -> None:
    method.load_state_dict(checkpoint["method"])
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(checkpoint["optimizers"][name])
    state.epoch = int(checkpoint["epoch"])
    state.global_step = int(checkpoint["global_step"])
    state.history = list(checkpoint.get("history", []))
    state.initial_backbone = checkpoint.get("student_backbone_init", {})
    logger.info("resumed at epoch %d (step %d)", state.epoch, state.global_step)

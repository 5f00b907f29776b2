"""CPU or GPU: what Ray Train workers and the ClusteringService run on.

* Train workers: ``runtime.use_gpu`` null (auto) becomes true when the Ray
  cluster this process is connected to has at least one GPU per worker at
  start (without Ray: when torch sees that many), false otherwise. The
  driver resolves it once, before the MLflow run logs the config, so the
  workers and MLflow see a concrete value.
* ClusteringService: faiss runs on the GPU when the actor holds one (Ray
  assigned it a GPU id) *and* the installed faiss is a GPU build. An actor
  without a GPU stays on the CPU even if faiss could see one, so that it
  never uses a GPU Ray has given to a Train worker.
* ``rekd train --cpu`` forces both onto CPUs (:data:`FORCE_CPU_OVERRIDES`).
"""

from __future__ import annotations

import logging

import ray

from rekd_ray.config import ConfigError, ExperimentConfig

__all__ = [
    "FORCE_CPU_OVERRIDES",
    "check_faiss_install",
    "clustering_actor_options",
    "resolve_use_gpu",
    "service_uses_gpu",
    "with_resolved_devices",
]

logger = logging.getLogger(__name__)

# `--set` overrides behind `rekd train --cpu`.
FORCE_CPU_OVERRIDES = ("runtime.use_gpu=false", "runtime.clustering_gpus=0")


def visible_gpus() -> float:
    """GPUs of the connected Ray cluster, else the GPUs torch sees here."""
    if ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0.0))
    import torch

    return float(torch.cuda.device_count())


def resolve_use_gpu(use_gpu: bool | None, num_workers: int, gpus: float) -> bool:
    """``use_gpu`` as a bool; auto (None) needs one GPU per Train worker."""
    if use_gpu is not None:
        return use_gpu
    return gpus >= num_workers


def with_resolved_devices(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with ``runtime.use_gpu`` resolved to true or false."""
    if config.runtime.use_gpu is not None:
        return config
    gpus = visible_gpus()
    use_gpu = resolve_use_gpu(None, config.runtime.num_workers, gpus)
    logger.info(
        "runtime.use_gpu=auto: %s (%g GPU(s) for %d worker(s))",
        "GPU" if use_gpu else "CPU",
        gpus,
        config.runtime.num_workers,
    )
    runtime = config.runtime.model_copy(update={"use_gpu": use_gpu})
    return config.model_copy(update={"runtime": runtime})


def clustering_actor_options(config: ExperimentConfig) -> dict:
    """Ray options of the ClusteringService a run creates (GPUs, resources)."""
    return {
        "num_gpus": config.runtime.clustering_gpus,
        "resources": dict(config.runtime.clustering_resources),
    }


def service_uses_gpu(gpu_ids: list, faiss_gpus: int) -> bool:
    """Whether the clustering actor runs faiss on a GPU.

    Args:
        gpu_ids: what ``ray.get_gpu_ids()`` returns inside the actor.
        faiss_gpus: GPUs the installed faiss sees (0 for faiss-cpu).
    """
    if not gpu_ids:
        return False
    if faiss_gpus == 0:
        logger.warning(
            "the clustering service holds GPU %s but faiss is a CPU build: "
            "clustering on the CPU; install 'rekd-ray[gpu]' on GPU nodes",
            gpu_ids,
        )
        return False
    return True


def check_faiss_install(config: ExperimentConfig) -> None:
    """Fail before a run starts when faiss is missing or installed twice.

    Raises:
        ConfigError: faiss-cpu and a faiss GPU wheel are both installed (or
            faiss is missing) and the method needs clustering.
    """
    if not config.uses_teacher:
        return
    from rekd_ray.clustering.faiss_import import import_faiss

    try:
        import_faiss()
    except ImportError as error:
        raise ConfigError(f"faiss: {error}") from None

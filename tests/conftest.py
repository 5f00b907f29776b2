"""Shared fixtures: tiny seeded configs and synthetic data, a local Ray."""

from __future__ import annotations

import os

import pytest
import torch

from rekd_ray.config import ExperimentConfig, build_config, merge

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

TINY = {
    "name": "tiny",
    "seed": 0,
    "method": "rekd",
    "data": {
        "dataset": "synthetic",
        "synthetic_train_samples": 64,
        "synthetic_test_samples": 32,
        "synthetic_classes": 4,
    },
    "student": {"backbone": "mobilenet_v3_small", "projection_hidden_dim": 64},
    "teacher": {"backbone": "shufflenet_v2_x1_0", "projection_hidden_dim": 64},
    "moco": {"queue_size": 32},
    "relation": {"num_prototypes": 4, "kmeans_iterations": 5},
    "optim": {"epochs": 2, "batch_size": 16},
    "eval": {
        "monitor_train_samples": 64,
        "monitor_test_samples": 32,
        "linear_epochs": 30,
        "baseline_random_init": False,
    },
}


def tiny_config(**sections) -> ExperimentConfig:
    """The tiny config with nested overrides, e.g. tiny_config(optim={"epochs": 1})."""
    return build_config(merge(TINY, sections))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray for the whole session (started once, shut down at end)."""
    import ray

    from rekd_ray.orchestration.clustering_service import RAY_NAMESPACE

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            namespace=RAY_NAMESPACE,
            include_dashboard=False,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()

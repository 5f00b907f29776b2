"""Helpers of the reliability tests: tiny Ray runs with injected faults.

Faults are injected through ``REKD_FAULTS`` (see ``rekd_ray.training.faults``),
read by the driver in ``run_training`` and handed to the workers.
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_config


@pytest.fixture
def faults(monkeypatch):
    """``faults(**plan)`` sets REKD_FAULTS for this test only."""

    def set_plan(**plan) -> None:
        monkeypatch.setenv("REKD_FAULTS", json.dumps(plan))

    return set_plan


def ray_config(tmp_path, **sections):
    """The tiny config, one torch thread, prototypes only at epoch ends."""
    runtime = {"storage_path": str(tmp_path / "runs"), "torch_threads": 1}
    runtime.update(sections.pop("runtime", {}))
    relation = {"sync_clustering": True, **sections.pop("relation", {})}
    return tiny_config(runtime=runtime, relation=relation, **sections)


def metric_steps(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of ``key``, in step order."""
    history = MlflowClient(uri).get_metric_history(run_id, key)
    return sorted((int(metric.step), metric.value) for metric in history)

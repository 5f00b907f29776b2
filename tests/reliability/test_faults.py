"""Faults during a Ray run: actors killed, a worker killed, a NaN loss.

Each test is one tiny run (64 synthetic images, batch 16) on the session's
2-CPU local Ray.
"""

from __future__ import annotations

import pytest
import ray
from mlflow.tracking import MlflowClient

from rekd_ray.orchestration.clustering_service import (
    RAY_NAMESPACE,
    service_actor_name,
)
from rekd_ray.orchestration.runner import RunFailedError, run_training
from rekd_ray.training.checkpoint import find_latest_checkpoint
from tests.reliability.conftest import metric_steps, ray_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _feature_store():
    names = ray.util.list_named_actors(all_namespaces=True)
    (name,) = [
        entry["name"]
        for entry in names
        if entry["name"].startswith("rekd-feature-store-")
    ]
    return ray.get_actor(name, namespace=RAY_NAMESPACE)


def test_clustering_service_and_store_killed_mid_run(ray_local, tmp_path, faults):
    # Rank 0 pauses after epoch 1 so that the kill lands mid-run.
    faults(stall_after_epoch=1, stall_seconds=4)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = ray_config(tmp_path, optim={"epochs": 3})
    seen: dict = {}

    def on_progress(state):
        if state.get("epoch_done", 0) >= 1 and "killed" not in seen:
            service = ray.get_actor(service_actor_name(), namespace=RAY_NAMESPACE)
            ray.kill(service)  # for good: a worker re-creates it
            store = _feature_store()
            ray.kill(store, no_restart=False)  # a crash: Ray restarts it
            seen["killed"] = state["epoch_done"]
            seen["store"] = store
        elif "killed" in seen and "store_stats" not in seen:
            seen["store_stats"] = ray.get(seen["store"].stats.remote())

    summary = run_training(config, tracking_uri=uri, on_progress=on_progress)

    assert seen["killed"] == 1
    run = MlflowClient(uri).get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    assert [step for step, _ in metric_steps(uri, summary.run_id, "epoch")] == [0, 1, 2]
    for key in ("train/loss", "val/knn_top1", "kd/prototype_nmi"):
        assert len(metric_steps(uri, summary.run_id, key)) == 3, key
    versions = [v for _, v in metric_steps(uri, summary.run_id, "kd/prototype_version")]
    # One clustering per epoch end, numbering continued by the new service.
    assert versions == [1.0, 2.0, 3.0]
    assert run.data.metrics["kd/service_reconnects"] >= 1.0
    assert run.data.metrics["kd/stale_versions_ignored"] == 0.0
    # The restarted store refilled its table from the epoch-1 checkpoint.
    assert seen["store_stats"]["restored"] == 1.0
    assert seen["store_stats"]["filled_samples"] == 64.0


def test_killed_train_worker_restarts_from_the_last_checkpoint(
    ray_local, tmp_path, faults
):
    # 2 workers x 2 steps per epoch: step 2 is the first of the second epoch.
    marker = tmp_path / "killed-once"
    faults(kill_rank=1, kill_at_step=2, once_file=str(marker))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = ray_config(tmp_path, runtime={"num_workers": 2}, optim={"epochs": 2})

    summary = run_training(config, tracking_uri=uri)

    assert marker.exists()  # the worker was killed
    assert MlflowClient(uri).get_run(summary.run_id).info.status == "FINISHED"
    assert summary.epochs == 2
    assert [step for step, _ in metric_steps(uri, summary.run_id, "epoch")] == [0, 1]
    directory, checkpoint = find_latest_checkpoint(tmp_path / "runs" / summary.run_id)
    assert checkpoint["epoch"] == 2


def test_nan_loss_fails_the_run_and_keeps_the_last_checkpoint(
    ray_local, tmp_path, faults
):
    # 4 steps per epoch: step 6 is in the second epoch.
    faults(nan_at_step=6)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = ray_config(tmp_path, optim={"epochs": 2})

    with pytest.raises(RunFailedError, match=r"non-finite loss nan at step 6") as error:
        run_training(config, tracking_uri=uri)

    run_id = error.value.run_id
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"
    directory, checkpoint = find_latest_checkpoint(tmp_path / "runs" / run_id)
    assert checkpoint["epoch"] == 1
    assert directory.name == "epoch_0001"

"""The main job on Ray: actors + Ray Train workers + MLflow, on synthetic data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rekd_ray.orchestration.runner import RunFailedError, run_training
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_two_workers_share_the_actors_and_log_to_mlflow(ray_local, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = tiny_config(
        runtime={"num_workers": 2, "storage_path": str(tmp_path / "runs")},
        optim={"epochs": 2, "batch_size": 16},
        # 128 test images so that the accuracy floor below is not at the mercy
        # of a handful of samples (two workers make the run non-deterministic).
        data={"synthetic_test_samples": 128},
        eval={"monitor_test_samples": 128},
    )
    summary = run_training(config, tracking_uri=uri)

    run = MlflowClient(uri).get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    history = MlflowClient(uri).get_metric_history(
        summary.run_id, "kd/prototype_version_min_worker"
    )
    # Both workers held prototypes (version > 0) in the second epoch.
    assert max(metric.value for metric in history) >= 1.0
    for key in (
        "train/loss",
        "val/knn_top1",
        "kd/prototype_nmi",
        "kd/empty_clusters",
        "time/cluster_seconds",
        "final/linear_top1",
        "final/knn_top1",
    ):
        assert key in run.data.metrics, key
    assert run.data.params["relation.num_prototypes"] == "4"
    assert summary.epochs == 2
    # Four classes: a trained backbone's probe beats chance (25 %).
    assert summary.linear_top1 > 30.0


def test_smoke_json_from_the_command_line(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "rekd_ray.cli",
            "train",
            str(REPO / "experiments" / "smoke.yaml"),
            "--json",
            "--set",
            f"runtime.storage_path={tmp_path / 'runs'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout)
    for key in (
        "run_id",
        "method",
        "student",
        "teacher",
        "num_prototypes",
        "linear_top1",
        "knn_top1",
        "wall_seconds",
    ):
        assert key in summary
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    artifacts = {item.path for item in client.list_artifacts(summary["run_id"])}
    assert {"config.json", "student_backbone.pt", "curves.png"} <= artifacts


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs the Debian package dataset-fashion-mnist (make test installs it)",
)
def test_real_fashion_mnist_through_the_actors(ray_local, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = tiny_config(
        data={"dataset": "fashion_mnist", "train_subset": 2048, "test_subset": 1000},
        teacher={"backbone": "alexnet"},
        moco={"queue_size": 512},
        relation={"num_prototypes": 20},
        optim={"epochs": 2, "batch_size": 128},
        eval={
            "monitor_train_samples": 2048,
            "monitor_test_samples": 1000,
            "linear_epochs": 30,
        },
        runtime={"storage_path": str(tmp_path / "runs")},
    )
    summary = run_training(config, tracking_uri=uri)
    run = MlflowClient(uri).get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["kd/prototype_version"] >= 1.0
    # Ten classes (chance 10 %); a linear probe on any sane feature beats 60 %.
    assert summary.linear_top1 > 60.0


def test_a_failing_worker_ends_the_run_failed(ray_local, tmp_path):
    # Files that count as images but do not decode: the workers fail inside
    # Ray Train, after the MLflow run exists.
    root = tmp_path / "images"
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for number in range(8):
                (folder / f"{number}.png").write_bytes(b"not a png")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = tiny_config(
        data={"dataset": "image_folder", "root": str(root)},
        runtime={"storage_path": str(tmp_path / "runs")},
    )
    with pytest.raises(RunFailedError, match="marked FAILED") as failure:
        run_training(config, tracking_uri=uri)
    assert MlflowClient(uri).get_run(failure.value.run_id).info.status == "FAILED"

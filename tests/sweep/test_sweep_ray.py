"""A 2-trial sweep through Ray Tune + Ray Train + MLflow, on tiny synthetic data."""

import json

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from rekd_ray.cli import app
from rekd_ray.sweep.runs import PARENT_TAG, child_runs
from tests.sweep.helpers import write_sweep

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_two_trial_sweep_one_parent_two_children_and_compare(
    ray_local, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_sweep(
        tmp_path,
        {"grid": {"relation.num_prototypes": [4, 8]}, "max_concurrent": 2},
        optim={"epochs": 2, "batch_size": 16},
        eval={"linear_epochs": 10},
        runtime={"storage_path": "runs", "torch_threads": 1},
    )
    result = CliRunner().invoke(app, ["sweep", str(path), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=100)
    parents = [run for run in runs if PARENT_TAG in run.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["sweep/finished"] == 2.0
    children = child_runs(uri, parent.info.run_id)
    assert len(children) == 2 == len(runs) - 1  # no other, orphan, run
    assert sorted(c.params["relation.num_prototypes"] for c in children) == ["4", "8"]
    for child in children:
        assert child.status == "FINISHED"
        assert child.params["optim.epochs"] == "2"
        assert child.metrics["cost/wall_seconds"] > 0.0
        assert child.metrics["cost/cpu_seconds"] > 0.0
        assert "final/linear_top1" in child.metrics
    # Every trial used the one shared clustering service.
    assert all(c.metrics["kd/prototype_version"] >= 1.0 for c in children)

    compared = CliRunner().invoke(
        app, ["compare", str(path), "--tracking-uri", uri, "--json"]
    )
    assert compared.exit_code == 0, compared.output
    comparison = json.loads(compared.output)
    assert {t["run_id"] for t in comparison["trials"]} == {c.run_id for c in children}
    assert comparison["varying"] == ["relation.num_prototypes"]
    assert len(comparison["settings"]) == 2
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.yaml", "tiny_sweep_linear_top1.png"} <= artifacts

    # Values the sweep does not have: one line naming the option, exit 2.
    for option, value, named in [
        ("--metric", "linear_top5", "--metric"),
        ("--baseline", "relation.num_prototypes=5", "takes 4, 8"),
        ("--baseline", "method=mocov2", "do not vary"),
    ]:
        refused = CliRunner().invoke(
            app, ["compare", str(path), "--tracking-uri", uri, option, value]
        )
        assert refused.exit_code == 2, refused.output
        assert named in refused.output

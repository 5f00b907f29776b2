"""Ctrl-C after epoch 2 of 3, then ``--resume``: the run finishes as if it had
never stopped.

Tolerance: the resumed run's weights equal those of an uninterrupted
one-process run of the same config and seed within rtol 1e-4, atol 1e-5 (one
Ray worker, one torch thread, prototypes taken at epoch ends
(``relation.sync_clustering``); measured max abs difference: see the README's
Reliability section). The one-process run is the reference because it is
deterministic and needs no second Ray run.
"""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from rekd_ray.data.datasets import load_dataset
from rekd_ray.orchestration.resume import prepare_resume
from rekd_ray.orchestration.runner import run_training
from rekd_ray.training.checkpoint import find_latest_checkpoint
from rekd_ray.training.loop import train
from tests.reliability.conftest import metric_steps, ray_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]

RTOL, ATOL = 1e-4, 1e-5


def test_interrupt_after_two_epochs_then_resume(
    ray_local, tmp_path, faults, monkeypatch
):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = ray_config(tmp_path, optim={"epochs": 3})
    runs = tmp_path / "runs"

    # Ctrl-C (SIGINT to this process) once 2 epochs are done; rank 0 waits
    # there so that the interrupt lands before epoch 3 ends.
    faults(interrupt_after_epoch=2, stall_after_epoch=2, stall_seconds=60)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, tracking_uri=uri)
    (run,) = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("rekd-tiny").experiment_id]
    )
    run_id = run.info.run_id
    assert run.info.status == "KILLED"
    assert [s for s, _ in metric_steps(uri, run_id, "epoch")] == [0, 1]
    assert find_latest_checkpoint(runs / run_id)[1]["epoch"] == 2

    monkeypatch.delenv("REKD_FAULTS")
    resume = prepare_resume(run_id, uri)
    assert resume.epochs_done == 2
    summary = run_training(resume.config, tracking_uri=uri, resume=resume)

    assert summary.run_id == run_id
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    assert [s for s, _ in metric_steps(uri, run_id, "epoch")] == [0, 1, 2]
    versions = [v for _, v in metric_steps(uri, run_id, "kd/prototype_version")]
    assert versions == [1.0, 2.0, 3.0]
    _, final = find_latest_checkpoint(runs / run_id)
    assert final["epoch"] == 3 and summary.epochs == 3

    reference = train(config, load_dataset(config.data, seed=config.seed))
    expected = reference.method.state_dict()
    worst = max(
        (tensor.double() - expected[name].double()).abs().max().item()
        for name, tensor in final["method"].items()
        if tensor.is_floating_point()
    )
    print(f"max abs weight difference resumed vs uninterrupted: {worst:.3g}")
    for name, tensor in final["method"].items():
        torch.testing.assert_close(tensor, expected[name], rtol=RTOL, atol=ATOL)

"""The trial's bridge to Tune: one report per finished epoch; a stop ends it."""

import pytest
from ray import tune

from rekd_ray.sweep.trial import _EpochReporter


def test_reports_once_per_finished_epoch(monkeypatch):
    reports = []
    monkeypatch.setattr(tune, "report", reports.append)
    reporter = _EpochReporter()
    reporter({"step": 3, "loss": 1.0})  # mid-epoch: nothing
    reporter({"epoch_done": 1, "val/knn_top1": 0.5, "train/loss": 2.0})
    reporter({"epoch_done": 1, "val/knn_top1": 0.5})  # same epoch again
    reporter({"epoch_done": 2, "val/knn_top1": 0.6})
    assert reports == [
        {"epoch": 1.0, "val/knn_top1": 0.5, "train/loss": 2.0},
        {"epoch": 2.0, "val/knn_top1": 0.6},
    ]


def test_a_scheduler_stop_becomes_an_interrupt(monkeypatch):
    def stopped(metrics):
        raise SystemExit(0)  # what Tune does to a stopped trial's thread

    monkeypatch.setattr(tune, "report", stopped)
    # run_training ends the MLflow run KILLED on KeyboardInterrupt.
    with pytest.raises(KeyboardInterrupt, match="stopped early"):
        _EpochReporter()({"epoch_done": 1, "val/knn_top1": 0.5})

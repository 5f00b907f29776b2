"""``rekd train --resume`` on runs that cannot be resumed: exit 2, one line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rekd_ray.cli import app
from rekd_ray.orchestration.resume import RUN_DIR_TAG
from rekd_ray.tracking.mlflow_run import end_run, start_run
from rekd_ray.training.checkpoint import checkpoint_dir_name, save_checkpoint
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One MLflow database for the module (creating one takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def _run(uri, tmp_path, status, epochs_done=None):
    """An MLflow run ended with ``status``, with a checkpoint if asked."""
    from mlflow.tracking import MlflowClient

    config = tiny_config()
    run_id = start_run(config, uri)
    run_dir = tmp_path / "runs" / run_id
    run_dir.mkdir(parents=True)
    MlflowClient(uri).set_tag(run_id, RUN_DIR_TAG, str(run_dir))
    if epochs_done is not None:
        state = {"config": config.model_dump(mode="json"), "epoch": epochs_done}
        save_checkpoint(state, run_dir / checkpoint_dir_name(epochs_done))
    end_run(uri, run_id, status)
    return run_id


def _resume(uri, run_id, *args):
    result = CliRunner().invoke(
        app, ["train", "--resume", run_id, "--tracking-uri", uri, *args]
    )
    lines = [line for line in result.output.splitlines() if line.strip()]
    return result.exit_code, lines


def test_resume_of_a_finished_run(tracking, tmp_path):
    run_id = _run(tracking, tmp_path, "FINISHED", epochs_done=2)
    code, lines = _resume(tracking, run_id)
    assert code == 2 and len(lines) == 1
    assert "FINISHED" in lines[0]


def test_resume_of_a_run_without_checkpoint(tracking, tmp_path):
    run_id = _run(tracking, tmp_path, "KILLED")
    code, lines = _resume(tracking, run_id)
    assert code == 2 and len(lines) == 1
    assert "no checkpoint" in lines[0]


def test_resume_of_an_unknown_run(tracking, tmp_path):
    _run(tracking, tmp_path, "KILLED")  # creates the database
    code, lines = _resume(tracking, "0123456789abcdef")
    assert code == 2 and len(lines) == 1
    assert "--resume" in lines[0]


def test_resume_without_a_database(tmp_path):
    code, lines = _resume(f"sqlite:///{tmp_path}/none.db", "0123456789abcdef")
    assert code == 2 and "--tracking-uri" in lines[0]


def test_resume_with_another_config(tracking, tmp_path):
    run_id = _run(tracking, tmp_path, "KILLED", epochs_done=1)
    code, lines = _resume(tracking, run_id, "--set", "optim.epochs=5")
    assert code == 2 and len(lines) == 1
    assert "optim.epochs" in lines[0] and "5" in lines[0]


def test_resume_may_change_threads_only(tracking, tmp_path):
    from rekd_ray.orchestration.resume import prepare_resume

    run_id = _run(tracking, tmp_path, "KILLED", epochs_done=1)
    point = prepare_resume(run_id, tracking, overrides=["runtime.torch_threads=1"])
    assert point.epochs_done == 1 and point.config.runtime.torch_threads == 1
    assert point.config.runtime.storage_path == str(tmp_path / "runs")


def test_a_torn_checkpoint_is_skipped(tmp_path):
    from rekd_ray.training.checkpoint import find_latest_checkpoint

    config = tiny_config()
    for epoch in (1, 2):
        state = {"config": config.model_dump(mode="json"), "epoch": epoch}
        save_checkpoint(state, tmp_path / checkpoint_dir_name(epoch))
    # A copy cut short by a crash: half of the newest file.
    newest = tmp_path / checkpoint_dir_name(2) / "checkpoint.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    directory, checkpoint = find_latest_checkpoint(tmp_path)
    assert directory.name == checkpoint_dir_name(1) and checkpoint["epoch"] == 1

"""`rekd` on bad input: exit 2, one line naming the field, nothing created."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rekd_ray.cli import app

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "experiments" / "smoke.yaml")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _train(*args):
    return CliRunner().invoke(app, ["train", *args])


BAD_INPUTS = [
    (["--set", "student.backbone=vgg11"], "student.backbone"),
    (["--set", "relation.num_prototypes=1"], "relation.num_prototypes"),
    (["--set", "relation.num_prototypes=100000"], "relation.num_prototypes"),
    (["--set", "moco.queue_size=8"], "moco.queue_size"),
    (["--set", "optim.lr=-1"], "optim.lr"),
    (
        ["--set", "data.root=/nonexistent", "--set", "data.dataset=fashion_mnist"],
        "data.root",
    ),
    (["--set", "optim.warp_speed=9"], "optim.warp_speed"),
    (["--set", "runtime.num_workers=64"], "runtime.num_workers"),
    (["--set", "data.train_subset=100000"], "data.train_subset"),
    (["--set", "data.test_subset=100000"], "data.test_subset"),
    (
        ["--set", "method=response", "--set", "teacher.projection_dim=64"],
        "teacher.projection_dim",
    ),
]


@pytest.mark.parametrize(("args", "field"), BAD_INPUTS)
def test_bad_input_exits_2_naming_the_field(workdir, args, field):
    result = _train(SMOKE, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert field in lines[0]
    # Nothing was created: no MLflow database, no run directory.
    assert not (workdir / "mlflow.db").exists()
    assert not (workdir / "rekd_runs").exists()


def test_yaml_that_does_not_parse(workdir):
    bad = workdir / "bad.yaml"
    bad.write_text("optim: {epochs: [1, 2\n")
    result = _train(str(bad))
    assert result.exit_code == 2
    assert "not valid YAML" in result.output
    assert not (workdir / "mlflow.db").exists()


def test_eval_without_a_database_creates_none(workdir):
    result = CliRunner().invoke(app, ["eval", "deadbeef"])
    assert result.exit_code == 2
    assert "--tracking-uri" in result.output
    assert not (workdir / "mlflow.db").exists()


def test_eval_of_unknown_run(workdir):
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{workdir}/mlflow.db").search_experiments()
    result = CliRunner().invoke(app, ["eval", "deadbeef"])
    assert result.exit_code == 2
    assert "RUN_ID" in result.output


def test_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "train" in result.output and "eval" in result.output


def test_offline_teacher_of_another_architecture(workdir):
    from tests.sweep.test_teacher_reuse import teacher_checkpoint

    checkpoint = teacher_checkpoint(workdir)  # a shufflenet_v2_x1_0 student
    result = _train(
        SMOKE,
        "--set",
        "teacher.kind=offline",
        "--set",
        f"teacher.checkpoint={checkpoint}",
        "--set",
        "teacher.backbone=alexnet",
    )
    assert result.exit_code == 2, result.output
    assert "teacher.backbone" in result.output
    assert "set teacher.backbone=shufflenet_v2_x1_0" in result.output
    assert not (workdir / "mlflow.db").exists()

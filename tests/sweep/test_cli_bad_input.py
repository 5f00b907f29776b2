"""`rekd sweep` / `rekd compare` on bad input: exit 2, one line, no runs."""

import shutil

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from rekd_ray.cli import app
from tests.sweep.helpers import write_sweep


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def empty_database(tmp_path_factory):
    """An MLflow sqlite file with its tables, created once (migrations are slow)."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def database_uri(workdir, empty_database):
    copy = workdir / "mlflow.db"
    shutil.copyfile(empty_database, copy)
    return f"sqlite:///{copy}"


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize(
    ("sweep", "args", "field"),
    [
        ({"grid": {"student.backbonee": ["resnet18"]}}, [], "grid.student.backbonee"),
        ({"grid": {}}, [], "grid"),
        ({"grid": {"seed": []}}, [], "grid.seed"),
        ({"grid": {"seed": [0, 1]}}, ["--max-concurrent", "0"], "--max-concurrent"),
        ({"grid": {"relation.num_prototypes": [4, 1000]}}, [], "num_prototypes"),
        (
            {"grid": {"seed": [0, 1]}, "asha": {"grace_period": 50}},
            [],
            "asha.grace_period",
        ),
        ({"grid": {"seed": [0, 1]}, "trial_cpus": 512}, [], "trial_cpus"),
        ({"grid": {"seed": [0, 0]}}, [], "grid.seed"),
        (
            {"grid": {"method": ["mocov2", "rekd"]}, "baseline": {"method": "x"}},
            [],
            "baseline.method",
        ),
        ({"grid": {"seed": [0, 1]}}, ["--address", "nohost"], "--address"),
    ],
)
def test_bad_sweep_exits_2_and_leaves_no_parent_run(
    workdir, database_uri, sweep, args, field
):
    path = write_sweep(workdir, sweep)
    uri = database_uri  # the database exists: runs would show up
    client = MlflowClient(uri)
    result = CliRunner().invoke(app, ["sweep", str(path), "--tracking-uri", uri, *args])
    assert result.exit_code == 2, result.output
    assert field in _one_line(result)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=10
    )
    assert runs == []


def test_compare_of_an_unknown_sweep(database_uri):
    result = CliRunner().invoke(
        app, ["compare", "nosuch", "--tracking-uri", database_uri]
    )
    assert result.exit_code == 2
    assert "no parent run of sweep 'nosuch'" in _one_line(result)


def test_compare_without_a_database(workdir):
    result = CliRunner().invoke(app, ["compare", "nosuch"])
    assert result.exit_code == 2
    assert "--tracking-uri" in _one_line(result)
    assert not (workdir / "mlflow.db").exists()


def test_compare_of_a_sweep_file_that_is_not_yaml(workdir, database_uri):
    (workdir / "broken.yaml").write_text("grid: {seed: [0, 1\n")
    result = CliRunner().invoke(
        app, ["compare", "broken.yaml", "--tracking-uri", database_uri]
    )
    assert result.exit_code == 2, result.output
    assert "not valid YAML" in _one_line(result)

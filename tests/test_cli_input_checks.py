"""More bad input for `rekd`: every case exits 2 with one line naming the
option or field, before Ray or MLflow start and without writing a file."""

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rekd_ray.cli import app

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "experiments" / "smoke.yaml")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_directory").mkdir()
    (tmp_path / "garbage.db").write_bytes(b"not a database " * 40)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "latin1.yaml").write_bytes(b"seed: 1\n# caf\xe9\n")
    (tmp_path / "empty_root").mkdir()
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE notes (text TEXT)")
    other.close()
    return tmp_path


CASES = [
    (["train", SMOKE, "--tracking-uri", "runs/mlflow.db"], "--tracking-uri"),
    (["train", SMOKE, "--tracking-uri", "ftp://host/db"], "--tracking-uri"),
    (["train", SMOKE, "--tracking-uri", "sqlite:///no/such/dir/m.db"], "no/such"),
    (["train", SMOKE, "--tracking-uri", "sqlite:///garbage.db"], "garbage.db"),
    (["train", SMOKE, "--tracking-uri", "sqlite:///other.db"], "MLflow's tables"),
    (["train", SMOKE, "--tracking-uri", "sqlite:///a_directory"], "--tracking-uri"),
    (["eval", "abc", "--tracking-uri", "sqlite:///garbage.db"], "--tracking-uri"),
    (["compare", "abc", "--tracking-uri", "sqlite:///garbage.db"], "--tracking-uri"),
    (["train", SMOKE, "--resume", ""], "--resume"),
    (["train", SMOKE, "--address", "head-node"], "--address"),
    (["train", SMOKE, "--address", "10.0.0.1:99999"], "--address"),
    (["train", SMOKE, "--set", "seed=-1"], "seed"),
    (["train", SMOKE, "--set", f"seed={2**31}"], "seed"),
    (["train", SMOKE, "--set", "optim..lr=0.1"], "optim..lr"),
    (["train", SMOKE, "--set", "optim.lrr=0.1"], "allowed here: batch_size"),
    (["train", "latin1.yaml"], "UTF-8"),
    (["train", "a_directory"], "is a directory"),
    (["train", SMOKE, "--set", "runtime.clustering_gpus=1"], "clustering_gpus"),
    (
        ["train", SMOKE, "--set", 'runtime.clustering_resources={"gpu_node": 1}'],
        "clustering_resources",
    ),
    (
        [
            "train",
            SMOKE,
            "--set",
            "data.dataset=fashion_mnist",
            "--set",
            "data.root=empty_root",
        ],
        "data.root",
    ),
    (
        [
            "train",
            SMOKE,
            "--set",
            "method=rekd",
            "--set",
            "teacher.kind=offline",
            "--set",
            "teacher.checkpoint=empty.pt",
        ],
        "teacher.checkpoint",
    ),
    (["bench", "data", "--quick", "--out", "garbage.db/r.json"], "is a file"),
    (["bench", "data", "--quick", "--out", "a_directory"], "--out"),
    (["train", SMOKE, "--tracking-uri", "file:runs"], "--tracking-uri"),
    (["train", SMOKE, "--tracking-uri", ""], "--tracking-uri"),
    (["train", SMOKE, "--tracking-uri", "sqlite:///x.db "], "spaces"),
    (["train", SMOKE, "--tracking-uri", "sqlite:///:memory:"], "in-memory"),
    (["train", SMOKE, "--tracking-uri", "databricks"], "--tracking-uri"),
    (["train", SMOKE, "--set", "runtime.storage_path="], "runtime.storage_path"),
    (["train", SMOKE, "--tracking-uri", "http://127.0.0.1:9"], "no MLflow server"),
    (["train", SMOKE, "--tracking-uri", "mysql://u@h/db"], "driver"),
    (["train", SMOKE, "--address", "127.0.0.1:9"], "nothing listens"),
    (["train", SMOKE, "--set", "runtime.storage_path=garbage.db/runs"], "storage"),
    (["train", SMOKE, "--set", "runtime.torch_threads=1000000000000"], "threads"),
    (["train", SMOKE, "--set", "optim.lr=.inf"], "optim.lr"),
    (["train", SMOKE, "--set", "student.backbone=x[/]"], "x[/]"),
    (["train", "x[bold]y.yaml"], "x[bold]y.yaml"),
    (["compare", "abc", "--plot", "a_directory"], "--plot"),
    (["compare", "abc", "--plot", "plot.jpg"], "--plot"),
]


@pytest.mark.parametrize(("args", "named"), CASES)
def test_bad_input_is_one_line_naming_the_option(workdir, args, named):
    before = sorted(p.name for p in workdir.iterdir())
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert named in lines[0]
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_garbage_database_is_left_as_it_was(workdir):
    before = (workdir / "garbage.db").read_bytes()
    CliRunner().invoke(app, ["train", SMOKE, "--tracking-uri", "sqlite:///other.db"])
    CliRunner().invoke(app, ["eval", "abc", "--tracking-uri", "sqlite:///garbage.db"])
    assert (workdir / "garbage.db").read_bytes() == before
    tables = sqlite3.connect(workdir / "other.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
    )
    assert [name for (name,) in tables] == ["notes"]


def test_help_shows_the_defaults(workdir):
    result = CliRunner().invoke(app, ["train", "--help"])
    assert "sqlite:///mlflow.db" in result.output

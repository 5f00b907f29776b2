"""MLflow runs of rekd-ray: one per training, created and ended by the driver.

The driver creates the run (params = the whole resolved config, flattened to
dotted keys), hands its id to the rank-0 Train worker, which logs per-epoch
metrics with :func:`log_metrics`, and ends it with a status that tells the
truth: FINISHED only after the final evaluation and artifacts are logged,
FAILED on any error, KILLED on an interrupt. ``MlflowClient`` is used
throughout (never the fluent API), so nothing is exported through environment
variables and concurrent runs cannot cross-talk.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from rekd_ray.config import ConfigError, ExperimentConfig, flatten_config
from rekd_ray.paths import is_writable_dir
from rekd_ray.training.checkpoint import git_sha

__all__ = [
    "DEFAULT_TRACKING_URI",
    "check_tracking_uri",
    "end_run",
    "log_metrics",
    "logged_epochs",
    "open_tracking_store",
    "reopen_run",
    "resolve_tracking_uri",
    "start_run",
]

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_MAX_BATCH = 100  # MLflow's limit on params / metrics in one log_batch call


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI, with a relative sqlite path made absolute.

    Workers run in other directories, so ``sqlite:///mlflow.db`` must be
    pinned to the caller's working directory before it is handed on.
    """
    uri = uri or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


# Schemes of the stores MLflow can track to (``postgresql+psycopg2`` etc.
# are matched on the part before the ``+``).
# MLflow 3 no longer tracks to a bare directory (``file:``).
_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql")
_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
_MLFLOW_TABLES = {"experiments", "runs", "alembic_version"}


def check_tracking_uri(uri: str | None, *, existing: bool = False) -> str:
    """Validate ``--tracking-uri`` before anything is created; return it resolved.

    Args:
        existing: the store must already hold MLflow's tables (commands that
            read runs: eval, compare, train --resume).

    Raises:
        ConfigError: an unknown scheme, a bare path, an sqlite file that
            cannot be used, a server that does not answer, or a database
            whose driver is not installed.
    """
    if uri is not None and (not uri.strip() or uri != uri.strip()):
        raise ConfigError(
            f"--tracking-uri: {uri!r} is empty or has spaces at an end; leave "
            "the option out for sqlite:///mlflow.db, or give a URI without them"
        )
    resolved = resolve_tracking_uri(uri)
    if resolved.lower().startswith("databricks"):  # databricks[://PROFILE]
        open_tracking_store(resolved)  # fails fast without credentials
        return resolved
    scheme, sep, _ = resolved.partition(":")
    if not sep or "/" in scheme or len(scheme) == 1:  # a path, or C:\ on Windows
        raise ConfigError(
            f"--tracking-uri: {resolved.strip()!r} is a bare path (MLflow 3 has "
            "no file store); use sqlite:///PATH or an http(s):// server"
        )
    base_scheme = scheme.split("+")[0].lower()
    if base_scheme not in _SCHEMES:
        raise ConfigError(
            f"--tracking-uri: unknown scheme {scheme!r}; use sqlite:///PATH, "
            "http(s)://HOST:PORT, databricks or a postgresql, mysql or mssql "
            "database URI"
        )
    if scheme == "sqlite":
        _check_sqlite_store(resolved, existing)
    elif base_scheme in ("http", "https"):
        _check_server(resolved)
    elif base_scheme in _DATABASE_SCHEMES:
        _check_database_driver(resolved)
    return resolved


def _check_server(uri: str, timeout_s: float = 5.0) -> None:
    """An MLflow server answers ``/health`` (MLflow's own client would retry
    for minutes, after Ray had started)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(
            f"--tracking-uri: no MLflow server answers at {uri} ({reason}); "
            "start one with `mlflow server --host HOST --port PORT` or pass "
            "another --tracking-uri"
        ) from None


def _check_database_driver(uri: str) -> None:
    """SQLAlchemy can load the driver of a database URI (no connection yet)."""
    import sqlalchemy

    try:
        sqlalchemy.create_engine(uri).dispose()
    except (ImportError, sqlalchemy.exc.ArgumentError) as error:
        raise ConfigError(
            f"--tracking-uri: cannot use {uri.split('://')[0]}:// here ({error}); "
            "install its database driver or pass sqlite:///PATH"
        ) from None


def _check_sqlite_store(uri: str, existing: bool) -> None:
    """The sqlite file is usable: its directory is writable (sqlite writes a
    journal beside it) and it is MLflow's, checked read-only so that MLflow
    never adds its tables to a database of something else."""
    if not uri.startswith("sqlite:///") or uri == "sqlite:///":
        raise ConfigError(
            f"--tracking-uri: {uri!r} names no file; use sqlite:///PATH "
            "(four slashes for an absolute PATH)"
        )
    path = Path(uri.removeprefix("sqlite:///").split("?")[0])
    if path.name == ":memory:":
        raise ConfigError(
            "--tracking-uri: an in-memory database is lost when the command "
            "ends and is not shared with Ray's workers; use sqlite:///PATH"
        )
    if path.is_dir():
        raise ConfigError(f"--tracking-uri: {path} is a directory; name a file in it")
    if not path.parent.is_dir():
        raise ConfigError(
            f"--tracking-uri: directory {path.parent} does not exist; create it "
            "or pass another --tracking-uri"
        )
    if not is_writable_dir(path.parent):
        raise ConfigError(
            f"--tracking-uri: directory {path.parent} is not writable; pass "
            "--tracking-uri sqlite:///PATH in a writable directory"
        )
    if not path.exists():
        if existing:
            raise ConfigError(
                f"--tracking-uri: no MLflow database at {path}; pass --tracking-uri"
            )
        return
    tables = _sqlite_tables(path)
    if (tables or existing) and not _MLFLOW_TABLES <= tables:
        raise ConfigError(
            f"--tracking-uri: {path} is an SQLite database without MLflow's "
            "tables; pass --tracking-uri sqlite:///PATH of an MLflow database"
        )


def _sqlite_tables(path: Path) -> set[str]:
    """Table names of the database at ``path``, opened read-only."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            ).fetchall()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise ConfigError(
            f"--tracking-uri: {path} is not an SQLite database ({error}); pass "
            "--tracking-uri sqlite:///PATH of an MLflow database"
        ) from None
    return {name for (name,) in rows}


def open_tracking_store(uri: str) -> MlflowClient:
    """A client whose store answered one query (raises ConfigError otherwise).

    Any failure of the store (a corrupt database, an old schema, a server
    that does not answer) becomes one line naming ``--tracking-uri``.
    """
    client = MlflowClient(uri)
    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    mlflow_logger.setLevel(logging.ERROR)  # its warnings would repeat the error
    try:
        client.search_experiments(max_results=1)
    except Exception as error:  # SQLAlchemy, MlflowException, requests...
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            f"--tracking-uri: cannot read the MLflow store at {uri} "
            f"({type(error).__name__}: {first}); pass the URI of an MLflow store"
        ) from None
    finally:
        mlflow_logger.setLevel(level)
    return client


def start_run(
    config: ExperimentConfig,
    tracking_uri: str,
    *,
    experiment_name: str | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create an MLflow run for ``config`` with its params; return the run id.

    With ``parent_run_id`` the run is a child (nested) run of that run, in
    its experiment, tagged ``mlflow.parentRunId`` as the MLflow UI expects.
    """
    client = MlflowClient(tracking_uri)
    name = experiment_name or f"rekd-{config.name}"
    if parent_run_id is not None:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    else:
        experiment = client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(name)
        )
    run_tags = {
        "rekd.method": config.method.value,
        "rekd.student": config.student.backbone,
        "mlflow.source.git.commit": git_sha(),
    }
    if config.uses_teacher:
        run_tags["rekd.teacher"] = config.teacher.backbone
    if parent_run_id is not None:
        run_tags["mlflow.parentRunId"] = parent_run_id
    run_tags.update(tags or {})
    run = client.create_run(experiment_id, run_name=config.name, tags=run_tags)
    run_id = run.info.run_id
    params = [Param(key, str(value)) for key, value in flatten_config(config).items()]
    for start in range(0, len(params), _MAX_BATCH):
        client.log_batch(run_id, params=params[start : start + _MAX_BATCH])
    logger.info("MLflow run %s in experiment %s", run_id, name)
    return run_id


def log_metrics(
    tracking_uri: str, run_id: str, metrics: dict[str, float], step: int
) -> None:
    """Log scalar metrics at ``step`` (epoch index for per-epoch metrics)."""
    timestamp = int(time.time() * 1000)
    entries = [
        Metric(key, float(value), timestamp, step) for key, value in metrics.items()
    ]
    client = MlflowClient(tracking_uri)
    for start in range(0, len(entries), _MAX_BATCH):
        client.log_batch(run_id, metrics=entries[start : start + _MAX_BATCH])


def end_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark the run FINISHED, FAILED or KILLED."""
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


def run_status(tracking_uri: str, run_id: str) -> str:
    return MlflowClient(tracking_uri).get_run(run_id).info.status


def logged_epochs(tracking_uri: str, run_id: str) -> set[int]:
    """The epochs whose metrics are in MLflow (steps of the ``epoch`` metric)."""
    history = MlflowClient(tracking_uri).get_metric_history(run_id, "epoch")
    return {int(metric.step) for metric in history}


def reopen_run(tracking_uri: str, run_id: str) -> None:
    """Set a KILLED or FAILED run back to RUNNING (``rekd train --resume``)."""
    client = MlflowClient(tracking_uri)
    client.update_run(run_id, status="RUNNING")
    resumes = int(client.get_run(run_id).data.tags.get("rekd.resumes", "0")) + 1
    client.set_tag(run_id, "rekd.resumes", str(resumes))
    logger.info("MLflow run %s reopened (resume %d)", run_id, resumes)

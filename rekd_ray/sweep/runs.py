"""A sweep in MLflow: one parent run, one child run per trial.

The parent is created by the sweep driver before any trial starts (so the
sqlite tables and the experiment exist before trials write concurrently) and
is ended by it. Children are created by :func:`run_training` inside the
trials, tagged ``mlflow.parentRunId``. A trial that Tune stops early (ASHA)
may die before it can end its run: :func:`close_open_children` marks such
runs KILLED, so no run of a sweep is left RUNNING.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from rekd_ray.training.checkpoint import git_sha

__all__ = [
    "PARENT_TAG",
    "ChildRun",
    "child_runs",
    "close_open_children",
    "find_parent_run",
    "start_parent_run",
]

logger = logging.getLogger(__name__)

PARENT_TAG = "rekd.sweep"  # value: the sweep's name; only parent runs carry it
_MAX_RESULTS = 10_000


@dataclass
class ChildRun:
    """A trial's MLflow run: its status, params and latest metrics."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)


def start_parent_run(
    tracking_uri: str,
    sweep_name: str,
    *,
    params: dict[str, str],
    tags: dict[str, str],
) -> str:
    """Create the sweep's parent run (experiment ``rekd-sweep-<name>``)."""
    client = MlflowClient(tracking_uri)
    experiment_name = f"rekd-sweep-{sweep_name}"
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(experiment_name)
    )
    run_tags = {
        PARENT_TAG: sweep_name,
        "mlflow.source.git.commit": git_sha(),
        **tags,
    }
    run = client.create_run(experiment_id, run_name=sweep_name, tags=run_tags)
    entries = [Param(key, str(value)[:6000]) for key, value in params.items()]
    for start in range(0, len(entries), 100):
        client.log_batch(run.info.run_id, params=entries[start : start + 100])
    logger.info("sweep %s: MLflow parent run %s", sweep_name, run.info.run_id)
    return run.info.run_id


def child_runs(tracking_uri: str, parent_run_id: str) -> list[ChildRun]:
    """Every child run of ``parent_run_id``, oldest first."""
    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=_MAX_RESULTS,
        order_by=["attributes.start_time ASC"],
    )
    return [
        ChildRun(
            run_id=run.info.run_id,
            name=run.info.run_name or run.info.run_id,
            status=run.info.status,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
        )
        for run in runs
    ]


def close_open_children(
    tracking_uri: str, parent_run_id: str, status: str = "KILLED"
) -> list[str]:
    """End every child run still RUNNING (its trial died); returns their ids."""
    client = MlflowClient(tracking_uri)
    closed = []
    for child in child_runs(tracking_uri, parent_run_id):
        if child.status == "RUNNING":
            client.set_tag(child.run_id, "rekd.sweep.ended_by", "sweep driver")
            client.set_terminated(child.run_id, status=status)
            closed.append(child.run_id)
    if closed:
        logger.info("marked %d trial run(s) %s: %s", len(closed), status, closed)
    return closed


def find_parent_run(tracking_uri: str, sweep_or_run: str) -> str:
    """The parent run id named by a run id or by a sweep file / sweep name.

    A sweep file or name picks the newest parent run of that sweep.

    Raises:
        LookupError: nothing matches; the message says what was searched.
    """
    client = MlflowClient(tracking_uri)
    path = Path(sweep_or_run)
    if not path.suffix:
        try:
            run = client.get_run(sweep_or_run)
        except Exception:  # MlflowException: not a run id
            run = None
        if run is not None:
            if PARENT_TAG not in run.data.tags:
                raise LookupError(
                    f"SWEEP_OR_RUN: run {sweep_or_run} is not a sweep's parent "
                    "run; pass the parent (tag rekd.sweep) or the sweep file"
                )
            return sweep_or_run
    name = _sweep_name(path) if path.suffix else sweep_or_run
    experiment = client.get_experiment_by_name(f"rekd-sweep-{name}")
    runs = []
    if experiment is not None:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not runs:
        raise LookupError(
            f"SWEEP_OR_RUN: no parent run of sweep {name!r} in {tracking_uri}; "
            "run `rekd sweep` first or pass --tracking-uri"
        )
    return runs[0].info.run_id


def _sweep_name(path: Path) -> str:
    """The ``name:`` of a sweep file, or the file's stem when it has none or
    does not exist (then it names a sweep whose file is elsewhere)."""
    from rekd_ray.config import read_yaml_mapping
    from rekd_ray.sweep.spec import SweepError

    if not path.exists():
        return path.stem
    try:
        loaded = read_yaml_mapping(path, "SWEEP_OR_RUN", SweepError)
    except SweepError as error:
        raise LookupError(str(error)) from None
    return str(loaded.get("name") or path.stem)


def dumps(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)

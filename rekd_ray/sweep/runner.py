"""``rekd sweep``: run every trial of a sweep on Ray Tune, under one parent run.

Table of contents of :func:`run_sweep`:

1. check every trial's config against its data (and this machine), before
   anything is created;
2. connect to Ray (``address``) or start a local one;
3. create the MLflow parent run (params: the search space);
4. compute offline teachers' features once, where trials share a teacher;
5. fit a ``Tuner`` over the grid; each trial is :func:`run_trial` (a Train
   run inside a function trainable, a child MLflow run);
6. end children left RUNNING by stopped trials (KILLED), log the sweep's
   totals on the parent and end it FINISHED (FAILED if a trial failed,
   KILLED on an interrupt).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rekd_ray.orchestration.runner import (
    check_address,
    check_against_data,
    check_local_resources,
    ensure_ray,
)
from rekd_ray.sweep.runs import (
    child_runs,
    close_open_children,
    dumps,
    start_parent_run,
)
from rekd_ray.sweep.spec import Sweep, SweepError
from rekd_ray.sweep.trial import CONTEXT_KEY, run_trial
from rekd_ray.tracking.mlflow_run import end_run, log_metrics, resolve_tracking_uri

__all__ = [
    "SweepFailedError",
    "SweepResult",
    "check_max_concurrent",
    "check_sweep",
    "run_sweep",
]

logger = logging.getLogger(__name__)


class SweepFailedError(RuntimeError):
    """The sweep itself (not one trial) failed; its parent run is FAILED."""


@dataclass
class SweepResult:
    """What ``rekd sweep`` prints. Accuracies are fractions, as in MLflow."""

    sweep: str
    parent_run_id: str
    status: str
    tracking_uri: str
    wall_seconds: float
    teacher_seconds_saved: float
    trials: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(trial["status"] == "FAILED" for trial in self.trials)

    def to_json(self) -> dict:
        return asdict(self)


def check_max_concurrent(max_concurrent: int | None) -> None:
    """Raises SweepError unless ``--max-concurrent`` is left out or >= 1."""
    if max_concurrent is not None and max_concurrent < 1:
        raise SweepError(
            f"--max-concurrent: must be at least 1 (got {max_concurrent}); "
            "leave it out to use the sweep file's max_concurrent"
        )


def check_sweep(sweep: Sweep, address: str | None, max_concurrent: int | None):
    """Everything that can be checked before Ray and MLflow start.

    Raises:
        SweepError / ConfigError: one line naming the field and the fix.
    """
    check_max_concurrent(max_concurrent)
    check_address(address)
    cpus = os.cpu_count() or 1
    if not address and sweep.spec.trial_cpus > cpus:
        raise SweepError(
            f"trial_cpus: {sweep.spec.trial_cpus:g} CPUs per trial, this machine "
            f"has {cpus}; no trial would ever start. Lower trial_cpus, or pass "
            "--address to use a Ray cluster"
        )
    for trial in sweep.trials:
        try:
            check_local_resources(trial.config, address)
            check_against_data(trial.config)
        except SweepError:
            raise
        except ValueError as error:  # ConfigError
            raise SweepError(f"trial {trial.label}: {error}") from None


def _parent_params(sweep: Sweep, max_concurrent: int) -> dict[str, str]:
    spec = sweep.spec
    params = {
        "sweep.base": spec.base,
        "sweep.trials": str(len(sweep.trials)),
        "sweep.max_concurrent": str(max_concurrent),
        "sweep.asha": dumps(spec.asha.model_dump() if spec.asha else None),
        "sweep.set": dumps(spec.set),
    }
    for key, values in (spec.grid or {}).items():
        params[f"sweep.grid.{key}"] = dumps(values)
    if spec.variants:
        params["sweep.variants"] = dumps([v.model_dump() for v in spec.variants])
    return params


def _tuner(sweep: Sweep, context: dict, max_concurrent: int, storage: Path):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    spec = sweep.spec
    space = {key: tune.grid_search(values) for key, values in (spec.grid or {}).items()}
    if spec.variants:
        space["variant"] = tune.grid_search([v.name for v in spec.variants])
    space[CONTEXT_KEY] = context
    scheduler = None
    if spec.asha is not None:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric="val/knn_top1",
            mode="max",
            max_t=max(trial.config.optim.epochs for trial in sweep.trials),
            grace_period=spec.asha.grace_period,
            reduction_factor=spec.asha.reduction_factor,
            # A trial that reaches max_t ends by itself after its final
            # evaluation; stopping it there would lose its final/* metrics.
            stop_last_trials=False,
        )
    return tune.Tuner(
        tune.with_resources(run_trial, {"CPU": spec.trial_cpus}),
        param_space=space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent,
            scheduler=scheduler,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{context['parent_run_id'][:8]}",
            storage_path=str(storage.resolve()),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


def run_sweep(
    sweep: Sweep,
    *,
    tracking_uri: str | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
) -> SweepResult:
    """Run ``sweep`` on Ray Tune; returns the trials as logged in MLflow."""
    concurrent = max_concurrent or sweep.spec.max_concurrent
    check_sweep(sweep, address, concurrent)
    uri = resolve_tracking_uri(tracking_uri)
    start = time.perf_counter()
    ensure_ray(address)
    parent = start_parent_run(
        uri,
        sweep.spec.name,
        params=_parent_params(sweep, concurrent),
        tags={
            "rekd.sweep.file": str(sweep.path),
            "rekd.sweep.varying": dumps(sweep.varying_keys),
            "rekd.sweep.baseline": dumps(sweep.spec.baseline),
        },
    )
    try:
        _log_sweep_file(uri, parent, sweep.path)
        status, saved = _fit(sweep, uri, parent, concurrent)
    except KeyboardInterrupt:
        close_open_children(uri, parent)
        end_run(uri, parent, "KILLED")
        raise
    except BaseException as error:
        close_open_children(uri, parent)
        end_run(uri, parent, "FAILED")
        raise SweepFailedError(
            f"sweep {sweep.spec.name} failed ({type(error).__name__}: {error}); "
            f"parent run {parent} is marked FAILED"
        ) from error
    wall = time.perf_counter() - start
    trials = _trial_rows(uri, parent)
    _log_totals(uri, parent, trials, wall, saved)
    end_run(uri, parent, status)
    return SweepResult(
        sweep=sweep.spec.name,
        parent_run_id=parent,
        status=status,
        tracking_uri=uri,
        wall_seconds=wall,
        teacher_seconds_saved=saved,
        trials=trials,
    )


def _fit(sweep: Sweep, uri: str, parent: str, concurrent: int) -> tuple[str, float]:
    from rekd_ray.sweep.teacher_reuse import SharedTeachers

    storage = Path(sweep.trials[0].config.runtime.storage_path) / "sweeps"
    with SharedTeachers(sweep, parent) as teachers:
        context = {
            "sweep": sweep.spec.name,
            "fixed": sweep.fixed_raw,
            "variants": {v.name: v.set for v in sweep.spec.variants or []},
            "grid_keys": list((sweep.spec.grid or {}).keys()),
            "cwd": os.getcwd(),
            "tracking_uri": uri,
            "parent_run_id": parent,
            "shared_teachers": teachers.names(),
        }
        with _tune_interrupt_watch() as interrupted:
            results = _tuner(sweep, context, concurrent, storage).fit()
        if interrupted.is_set():
            # Tune stopped its trials on Ctrl-C and returned normally.
            raise KeyboardInterrupt
        saved = teachers.seconds_saved(child_runs(uri, parent))
    close_open_children(uri, parent)
    errors = [result.error for result in results if result.error is not None]
    for error in errors:
        logger.warning("a trial failed: %s", str(error).strip().splitlines()[0])
    return ("FAILED" if errors else "FINISHED"), saved


@contextlib.contextmanager
def _tune_interrupt_watch() -> Iterator[threading.Event]:
    """Tell whether Ray Tune swallowed a Ctrl-C during ``Tuner.fit``.

    Tune replaces the SIGINT handler for the fit, stops the trials on the
    first Ctrl-C, puts the handler it found back and returns as if the sweep
    had ended. We install a sentinel handler before the fit: finding it in
    place again afterwards means Tune was interrupted. The sentinel itself
    raises ``KeyboardInterrupt`` should it ever be called (when Tune installs
    no handler, ``TUNE_DISABLE_SIGINT_HANDLER=1``).
    """
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted  # signals can be handled in the main thread only
        return

    def sentinel(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, sentinel)
    try:
        yield interrupted
    finally:
        if signal.getsignal(signal.SIGINT) is sentinel and not int(
            os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")
        ):
            interrupted.set()
        signal.signal(signal.SIGINT, previous)


def _trial_rows(uri: str, parent: str) -> list[dict]:
    return [
        {
            "run_id": child.run_id,
            "name": child.name,
            "status": child.status,
            **{
                k: v
                for k, v in child.metrics.items()
                if k.startswith(("final/", "cost/"))
            },
        }
        for child in child_runs(uri, parent)
    ]


def _log_totals(uri, parent, trials, wall, saved) -> None:
    totals = {
        "sweep/trials": float(len(trials)),
        "sweep/finished": float(sum(t["status"] == "FINISHED" for t in trials)),
        "sweep/failed": float(sum(t["status"] == "FAILED" for t in trials)),
        "sweep/stopped": float(sum(t["status"] == "KILLED" for t in trials)),
        "sweep/wall_seconds": wall,
        "sweep/cpu_seconds": sum(t.get("cost/cpu_seconds", 0.0) for t in trials),
        "teacher/seconds_saved": saved,
    }
    log_metrics(uri, parent, totals, step=0)


def _log_sweep_file(uri: str, parent: str, path: Path) -> None:
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as directory:
        copy = Path(directory) / "sweep.yaml"
        copy.write_text(path.read_text())
        MlflowClient(uri).log_artifact(parent, str(copy))

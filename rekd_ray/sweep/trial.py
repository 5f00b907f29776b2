"""What one Tune trial runs: a whole ``rekd train`` run, as a child MLflow run.

Ray 2.60 runs Train inside Tune from a *function* trainable that builds and
fits a ``TorchTrainer`` (``Tuner(trainer)`` fails under Train V2; see
RAY_NOTES.md section 2). :func:`run_trial` is that function: it rebuilds its
config from the Tune params, calls :func:`run_training` with the sweep's
parent run id, and forwards each finished epoch's kNN top-1 to Tune (for
ASHA) from the run's progress board. Every trial reaches the same detached
ClusteringService by name.

Cost per trial, logged as ``cost/*`` metrics on the child run:

* ``cost/wall_seconds``: the trial's wall time (Train workers' start-up,
  training, final evaluation);
* ``cost/cpu_seconds``: CPU time of this trial's driver process plus that of
  every Train worker process (``time/workers_cpu_seconds`` of the last epoch);
* ``cost/gpu_seconds``: GPUs reserved times wall time, only when it used any.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rekd_ray.config import ExperimentConfig, build_config, merge
from rekd_ray.sweep.spec import nest, trial_label
from rekd_ray.sweep.teacher_reuse import teacher_group

__all__ = ["CONTEXT_KEY", "TrialStopped", "run_trial", "trial_config"]

logger = logging.getLogger(__name__)

# The Tune param holding what every trial shares (base config, parent run).
CONTEXT_KEY = "rekd"
# Config paths that must not depend on the trial's working directory: Tune
# changes it to the trial folder.
_PATH_KEYS = (("runtime", "storage_path"), ("data", "root"), ("teacher", "checkpoint"))


class TrialStopped(Exception):
    """The Tune scheduler (ASHA) stopped this trial early."""


def trial_config(params: dict[str, Any]) -> ExperimentConfig:
    """The trial's config: the sweep's fixed base, its variant, its grid point."""
    context = params[CONTEXT_KEY]
    raw = context["fixed"]
    variant = params.get("variant")
    if variant is not None:
        raw = merge(raw, nest(context["variants"][variant]))
    point = {key: params[key] for key in context["grid_keys"]}
    raw = merge(raw, nest(point))
    # The child run's name in MLflow: the sweep and the trial's setting.
    raw = merge(raw, {"name": f"{context['sweep']}:{trial_label(variant, point)}"})
    resolved = build_config(raw).model_dump(mode="json")  # defaults included
    for section, key in _PATH_KEYS:
        value = resolved[section][key]
        if value and not Path(value).is_absolute():
            raw = merge(raw, {section: {key: str(Path(context["cwd"]) / value)}})
    config = build_config(raw)
    group = teacher_group(config)
    store = context.get("shared_teachers", {}).get(group)
    if store is not None:
        config = build_config(merge(raw, {"teacher": {"features_store": store}}))
    return config


class _EpochReporter:
    """``on_progress`` callback: one ``tune.report`` per finished epoch."""

    def __init__(self) -> None:
        self.epochs = 0
        self.last: dict[str, float] = {}

    def __call__(self, state: dict[str, float]) -> None:
        from ray import tune

        done = int(state.get("epoch_done", 0))
        if done <= self.epochs:
            return
        self.epochs = done
        self.last = {"epoch": float(done)}
        for key in ("val/knn_top1", "train/loss"):
            if key in state:
                self.last[key] = float(state[key])
        try:
            tune.report(dict(self.last))
        except SystemExit:
            # Tune ends a stopped trial's thread with sys.exit at its next
            # report; run_training then ends the MLflow run KILLED.
            raise KeyboardInterrupt("stopped early by the Tune scheduler") from None


def _costs(summary, wall: float, driver_cpu: float) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    workers_cpu = summary.history[-1].get("time/workers_cpu_seconds", 0.0)
    costs = {"cost/wall_seconds": wall, "cost/cpu_seconds": driver_cpu + workers_cpu}
    # The run logs the devices it resolved (runtime.use_gpu may be "auto").
    params = MlflowClient(summary.tracking_uri).get_run(summary.run_id).data.params
    if params.get("runtime.use_gpu") == "True":
        costs["cost/gpu_seconds"] = wall * int(params["runtime.num_workers"])
    return costs


def run_trial(params: dict[str, Any]) -> None:
    """The Tune function trainable: train, log costs, report final metrics."""
    from ray import tune

    from rekd_ray.orchestration.runner import run_training
    from rekd_ray.tracking.mlflow_run import log_metrics

    context = params[CONTEXT_KEY]
    config = trial_config(params)
    reporter = _EpochReporter()
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    try:
        summary = run_training(
            config,
            tracking_uri=context["tracking_uri"],
            on_progress=reporter,
            parent_run_id=context["parent_run_id"],
        )
    except KeyboardInterrupt:
        logger.info("trial stopped early after %d epochs", reporter.epochs)
        return
    wall = time.perf_counter() - wall_start
    costs = _costs(summary, wall, time.process_time() - cpu_start)
    log_metrics(summary.tracking_uri, summary.run_id, costs, step=summary.epochs)
    final = {
        **reporter.last,
        "final/linear_top1": summary.linear_top1 / 100.0,
        "final/knn_top1": summary.knn_top1 / 100.0,
        **costs,
        "run_id": summary.run_id,
    }
    tune.report(final)

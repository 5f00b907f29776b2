"""``rekd compare``: a sweep's trials side by side, read back from MLflow.

A *setting* is a trial's values of the params that vary across the sweep,
seed excepted; the seeds of one setting are its repeats. For each setting:
the mean of the chosen metric with its 95 % interval over seeds, and the
difference against the baseline setting that agrees with it on every other
param (so ``baseline: {method: mocov2}`` compares each backbone's ReKD run
with that backbone's MoCo-v2 run). Top-1 metrics are shown in percent.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field

from mlflow.tracking import MlflowClient

from rekd_ray.sweep.runs import PARENT_TAG, child_runs
from rekd_ray.sweep.stats import difference_interval, mean_interval

__all__ = ["Comparison", "build_comparison", "metric_key", "parse_baseline"]

logger = logging.getLogger(__name__)

# Params that differ between trials without being what a sweep compares.
_NOT_COMPARED = ("name", "teacher.features_store")
REPEAT_KEY = "seed"
COST_KEYS = ("cost/wall_seconds", "cost/cpu_seconds", "cost/gpu_seconds")


def metric_key(metric: str) -> str:
    """``linear_top1`` -> ``final/linear_top1``; keys with a ``/`` are kept."""
    return metric if "/" in metric else f"final/{metric}"


def _scale(key: str) -> float:
    return 100.0 if key.endswith("top1") else 1.0


@dataclass
class Comparison:
    """Trials and per-setting statistics of one sweep (JSON-ready)."""

    sweep: str
    parent_run_id: str
    metric: str
    varying: list[str]
    baseline: dict[str, str] | None
    trials: list[dict] = field(default_factory=list)
    settings: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return _no_nan(asdict(self))


def _no_nan(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _no_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_no_nan(item) for item in value]
    return value


def parse_baseline(text: str | None) -> dict[str, str] | None:
    """``"method=mocov2,student.backbone=resnet18"`` -> a dict of strings."""
    if not text:
        return None
    pairs = [part.partition("=") for part in text.split(",") if part.strip()]
    if any(not sep or not key.strip() for key, sep, _ in pairs):
        raise ValueError(
            f"--baseline: expected KEY=VALUE[,KEY=VALUE], e.g. method=mocov2; "
            f"got {text!r}"
        )
    return {key.strip(): value.strip() for key, _, value in pairs}


def _varying(children) -> list[str]:
    keys = sorted({key for child in children for key in child.params})
    return [
        key
        for key in keys
        if key not in _NOT_COMPARED
        and len({child.params.get(key) for child in children}) > 1
    ]


def _parent_baseline(parent, children, setting_keys) -> dict[str, str] | None:
    """The sweep file's baseline; a variant stands for its trials' params."""
    raw = json.loads(parent.data.tags.get("rekd.sweep.baseline", "null") or "null")
    if not raw:
        return None
    baseline = {k: str(v) for k, v in raw.items() if k != "variant"}
    if "variant" in raw:
        # Child runs are named "<sweep>:<variant>,<grid point>" (trial.py).
        sweep = parent.data.tags.get(PARENT_TAG, "")
        prefix = f"{sweep}:{raw['variant']}"
        for child in children:
            if child.name == prefix or child.name.startswith(prefix + ","):
                baseline.update({k: child.params.get(k) for k in setting_keys})
                break
    return {k: v for k, v in baseline.items() if k in setting_keys} or None


def build_comparison(
    tracking_uri: str,
    parent_run_id: str,
    metric: str = "linear_top1",
    baseline: dict[str, str] | None = None,
) -> Comparison:
    """Read the sweep's children and compute the per-setting statistics.

    Raises:
        LookupError: the run is not a sweep parent, or it has no trials.
    """
    parent = MlflowClient(tracking_uri).get_run(parent_run_id)
    children = child_runs(tracking_uri, parent_run_id)
    if not children:
        raise LookupError(f"sweep parent run {parent_run_id} has no trial runs")
    key = metric_key(metric)
    _check_metric(key, children)
    varying = _varying(children)
    setting_keys = [k for k in varying if k != REPEAT_KEY]
    if baseline:
        _check_baseline(baseline, children, setting_keys)
    baseline = baseline or _parent_baseline(parent, children, setting_keys)
    comparison = Comparison(
        sweep=parent.data.tags.get(PARENT_TAG, parent.info.run_name or ""),
        parent_run_id=parent_run_id,
        metric=key,
        varying=varying,
        baseline=baseline,
        trials=[_trial_row(child, varying, key) for child in children],
    )
    comparison.settings = _settings(comparison.trials, setting_keys, key, baseline)
    return comparison


def _check_metric(key: str, children) -> None:
    """Some trial logged ``key`` (raises LookupError naming those logged)."""
    logged = {name for child in children for name in child.metrics}
    if key in logged:
        return
    finals = sorted(
        name.removeprefix("final/") for name in logged if name.startswith("final/")
    )
    raise LookupError(
        f"--metric: no trial of this sweep logged {key}; choose one of "
        f"{', '.join(finals) or 'none (no trial finished)'}, or a full "
        "MLflow key such as val/knn_top1"
    )


def _check_baseline(baseline: dict[str, str], children, setting_keys) -> None:
    """``--baseline`` names varying keys, each with a value some trial has."""
    unknown = sorted(set(baseline) - set(setting_keys))
    if unknown:
        raise LookupError(
            f"--baseline: {', '.join(unknown)} do not vary in this sweep; use "
            f"some of {', '.join(setting_keys) or '(nothing varies)'}"
        )
    for key, value in baseline.items():
        values = sorted({str(child.params.get(key)) for child in children})
        if value not in values:
            raise LookupError(
                f"--baseline: {key}={value} is not a setting of this sweep; "
                f"{key} takes {', '.join(values)}"
            )


def _trial_row(child, varying: list[str], key: str) -> dict:
    row = {"run_id": child.run_id, "name": child.name, "status": child.status}
    row["params"] = {k: child.params.get(k) for k in varying}
    row["seed"] = child.params.get(REPEAT_KEY)
    for name in (key, "final/knn_top1", *COST_KEYS):
        if name in child.metrics:
            row[name] = child.metrics[name] * _scale(name)
    return row


def _settings(trials, setting_keys, key, baseline) -> list[dict]:
    groups: dict[tuple, list[float]] = {}
    for trial in trials:
        setting = tuple(trial["params"].get(k) for k in setting_keys)
        values = groups.setdefault(setting, [])
        if key in trial:
            values.append(trial[key])
    rows = []
    for setting, values in groups.items():
        params = dict(zip(setting_keys, setting, strict=True))
        row = {"params": params, "n": len(values)}
        if values:
            interval = mean_interval(values)
            row.update(mean=interval.mean, low=interval.low, high=interval.high)
        reference = _reference(params, baseline)
        if reference == params:
            row["baseline"] = True
        elif reference is not None:
            reference_values = groups.get(tuple(reference.values()))
            if values and reference_values:
                diff = difference_interval(values, reference_values)
                row.update(diff=diff.mean, diff_low=diff.low, diff_high=diff.high)
        rows.append(row)
    return sorted(rows, key=lambda row: [_sort_key(v) for v in row["params"].values()])


def _sort_key(value) -> tuple:
    """Numbers in numeric order, before strings (params are strings)."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _reference(params: dict, baseline: dict | None) -> dict | None:
    if not baseline or not params:
        return None
    return {k: baseline.get(k, value) for k, value in params.items()}

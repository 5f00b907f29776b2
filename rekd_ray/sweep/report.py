"""Rich tables for ``rekd sweep`` and ``rekd compare`` (rendering only)."""

from __future__ import annotations

import math

from rich.table import Table

__all__ = ["comparison_tables", "sweep_table"]


def _number(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _short(key: str) -> str:
    return key.removeprefix("final/").removeprefix("cost/")


def sweep_table(result) -> Table:
    """One row per trial of a finished sweep."""
    table = Table(title=f"rekd sweep {result.sweep}: parent run {result.parent_run_id}")
    for column in ("trial", "status", "linear %", "kNN %", "wall s", "CPU s"):
        table.add_column(column)
    for trial in result.trials:
        table.add_row(
            trial["name"],
            trial["status"],
            _number(100 * trial.get("final/linear_top1", math.nan)),
            _number(100 * trial.get("final/knn_top1", math.nan)),
            _number(trial.get("cost/wall_seconds"), 0),
            _number(trial.get("cost/cpu_seconds"), 0),
        )
    return table


def comparison_tables(comparison) -> list[Table]:
    """The trials table and, per setting, mean, interval and baseline diff."""
    metric = _short(comparison.metric)
    trials = Table(
        title=f"{comparison.sweep}: trials (parent {comparison.parent_run_id})"
    )
    keys = [key for key in comparison.varying if key != "seed"]
    for column in (
        "run",
        "status",
        *keys,
        "seed",
        metric,
        "knn_top1",
        "wall s",
        "CPU s",
    ):
        trials.add_column(column)
    for row in comparison.trials:
        trials.add_row(
            row["run_id"][:8],
            row["status"],
            *(str(row["params"].get(key)) for key in keys),
            str(row.get("seed")),
            _number(row.get(comparison.metric)),
            _number(row.get("final/knn_top1")),
            _number(row.get("cost/wall_seconds"), 0),
            _number(row.get("cost/cpu_seconds"), 0),
        )
    settings = Table(title=f"{metric} per setting: mean and 95 % interval over seeds")
    baseline = ", ".join(f"{k}={v}" for k, v in (comparison.baseline or {}).items())
    for column in (*keys, "n", "mean", "95 % interval", f"vs {baseline or '-'}"):
        settings.add_column(column)
    for row in comparison.settings:
        interval = "-"
        if row.get("low") is not None and not math.isnan(row["low"]):
            interval = f"[{_number(row['low'])}, {_number(row['high'])}]"
        settings.add_row(
            *(str(row["params"].get(key)) for key in keys),
            str(row["n"]),
            _number(row.get("mean")),
            interval,
            _difference(row),
        )
    return [trials, settings]


def _difference(row: dict) -> str:
    if row.get("baseline"):
        return "baseline"
    if "diff" not in row:
        return "-"
    text = f"{row['diff']:+.2f}"
    if row.get("diff_low") is not None and not math.isnan(row["diff_low"]):
        text += f" [{row['diff_low']:+.2f}, {row['diff_high']:+.2f}]"
    return text

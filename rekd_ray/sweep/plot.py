"""The comparison figure of a sweep (matplotlib, no display needed).

* When M (``relation.num_prototypes``) varies: the metric against M, one
  line per combination of the other varying params (e.g. per backbone),
  with the 95 % interval over seeds as error bars.
* Otherwise: bars per method (or per setting), grouped by student backbone
  when it varies, with the same error bars.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_comparison"]

M_KEY = "relation.num_prototypes"
GROUP_KEY = "student.backbone"


def _axis_label(metric: str) -> str:
    name = metric.split("/")[-1]
    return f"{name} (%)" if name.endswith("top1") else name


def _error(row: dict) -> float:
    low = row.get("low", math.nan)
    return 0.0 if low is None or math.isnan(low) else row["mean"] - low


def _label(params: dict, keys: list[str]) -> str:
    return ", ".join(f"{key.split('.')[-1]}={params[key]}" for key in keys) or "all"


def _lines_against_m(axis, rows: list[dict], metric: str) -> None:
    others = [key for key in rows[0]["params"] if key != M_KEY]
    series: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        name = _label(row["params"], others)
        point = (float(row["params"][M_KEY]), row["mean"], _error(row))
        series.setdefault(name, []).append(point)
    for name, points in sorted(series.items()):
        xs, ys, errors = zip(*sorted(points), strict=True)
        axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=name)
    axis.set_xscale("log")
    ms = sorted({float(row["params"][M_KEY]) for row in rows})
    axis.set_xticks(ms, [f"{m:g}" for m in ms])
    axis.minorticks_off()
    axis.set_xlabel("M (prototypes)")
    axis.set_ylabel(_axis_label(metric))
    axis.legend(fontsize=7)


def _grouped_bars(axis, rows: list[dict], metric: str) -> None:
    keys = list(rows[0]["params"])
    group_keys = [GROUP_KEY] if GROUP_KEY in keys else []
    bar_keys = [key for key in keys if key not in group_keys]
    groups = sorted({_label(row["params"], group_keys) for row in rows})
    bars = sorted({_label(row["params"], bar_keys) for row in rows})
    width = 0.8 / max(1, len(bars))
    for index, bar in enumerate(bars):
        xs, ys, errors = [], [], []
        for row in rows:
            if _label(row["params"], bar_keys) != bar:
                continue
            xs.append(groups.index(_label(row["params"], group_keys)) + index * width)
            ys.append(row["mean"])
            errors.append(_error(row))
        axis.bar(xs, ys, width, yerr=errors, capsize=3, label=bar)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups)
    axis.set_ylabel(_axis_label(metric))
    low = min(row["mean"] - _error(row) for row in rows)
    axis.set_ylim(bottom=max(0.0, low - 5.0))
    axis.legend(fontsize=7)


def plot_comparison(comparison, path: str | Path) -> Path:
    """Draw ``comparison`` (a :class:`Comparison`) into the PNG ``path``."""
    rows = [row for row in comparison.settings if "mean" in row]
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    if not rows:
        axis.text(0.5, 0.5, "no finished trials", ha="center")
    elif M_KEY in rows[0]["params"]:
        _lines_against_m(axis, rows, comparison.metric)
    else:
        _grouped_bars(axis, rows, comparison.metric)
    axis.set_title(f"{comparison.sweep}: {comparison.metric} (95 % interval)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

"""Per-epoch training curves as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_curves"]

_PANELS = (
    ("losses", ("train/loss_student", "train/loss_teacher", "train/loss_relation")),
    ("kNN top-1 (monitor)", ("val/knn_top1",)),
    ("prototypes", ("kd/prototype_nmi", "kd/prototype_purity")),
    ("positives per anchor", ("train/positives_per_anchor",)),
)


def plot_curves(history: list[dict[str, float]], path: str | Path, title: str) -> Path:
    """Plot the per-epoch metrics of ``history`` that exist into ``path``."""
    panels = [
        (label, [key for key in keys if any(key in row for row in history)])
        for label, keys in _PANELS
    ]
    panels = [(label, keys) for label, keys in panels if keys]
    figure, axes = plt.subplots(1, max(1, len(panels)), figsize=(4 * len(panels), 3))
    axes = [axes] if len(panels) <= 1 else list(axes)
    for axis, (label, keys) in zip(axes, panels, strict=False):
        for key in keys:
            points = [(row["epoch"], row[key]) for row in history if key in row]
            axis.plot(*zip(*points, strict=True), marker="o", label=key.split("/")[-1])
        axis.set_title(label)
        axis.set_xlabel("epoch")
        axis.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

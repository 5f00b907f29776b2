"""Agreement between cluster assignments and class labels (NMI, purity).

A diagnostic of semantic collapse: prototypes that mix classes have low
purity and low normalized mutual information.

Shape legend: N samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

__all__ = ["cluster_quality"]


def _as_int_array(values: Any, param: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, maybe on a GPU
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{param} must be 1-d (N,); got shape {array.shape}")
    return array.astype(np.int64)


def cluster_quality(assignments: Any, labels: Any) -> dict[str, float]:
    """NMI and purity of cluster assignments against labels.

    ``purity = sum_c max_y |{i : a_i = c, y_i = y}| / N``, and ``nmi`` is
    scikit-learn's ``normalized_mutual_info_score`` (arithmetic mean).
    Samples with a negative assignment (not yet assigned) are ignored; if no
    sample is left, both scores are 0.0.

    Args:
        assignments: Cluster id of each sample, -1 when unassigned. Array,
            list or tensor. Shape: (N,).
        labels: Class of each sample. Shape: (N,).

    Returns:
        ``{"nmi": ..., "purity": ...}``, both in [0, 1].

    Raises:
        ValueError: If the inputs are not 1-d or differ in length.
    """
    assignments = _as_int_array(assignments, "assignments")
    labels = _as_int_array(labels, "labels")
    if assignments.shape != labels.shape:
        raise ValueError(
            f"assignments and labels must have the same length; got "
            f"{assignments.shape[0]} and {labels.shape[0]}"
        )
    assigned = assignments >= 0
    if not assigned.any():
        return {"nmi": 0.0, "purity": 0.0}
    assignments, labels = assignments[assigned], labels[assigned]

    counts = contingency_matrix(labels, assignments)  # (classes, clusters)
    purity = counts.max(axis=0).sum() / assignments.shape[0]
    nmi = normalized_mutual_info_score(labels, assignments)
    return {"nmi": float(nmi), "purity": float(purity)}

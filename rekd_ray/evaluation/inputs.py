"""Input checks shared by the evaluators (kNN, linear probe).

Shape legend: N train samples, T test samples, F feature.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_train_test_features"]


def check_train_test_features(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
) -> None:
    """Raise ValueError unless features are (N, F) / (T, F) with matching labels
    and N >= 1."""
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            "train_features and test_features must be 2-d (N, F); got "
            f"{tuple(train_features.shape)} and {tuple(test_features.shape)}"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            "train_features and test_features must have the same F; got "
            f"{train_features.shape[1]} and {test_features.shape[1]}"
        )
    if train_labels.shape != train_features.shape[:1]:
        raise ValueError(
            f"train_labels must have shape ({train_features.shape[0]},); "
            f"got {tuple(train_labels.shape)}"
        )
    if test_labels.shape != test_features.shape[:1]:
        raise ValueError(
            f"test_labels must have shape ({test_features.shape[0]},); "
            f"got {tuple(test_labels.shape)}"
        )
    if train_features.shape[0] == 0:
        raise ValueError("train_features must hold at least one sample; got 0")

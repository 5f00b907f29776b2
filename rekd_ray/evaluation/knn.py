"""Weighted k-nearest-neighbour accuracy on cosine similarity.

The monitor of InstDisc (arXiv:1805.01978, Sec. 3.4), used by MoCo and ReKD
papers alike: each test sample's k most similar train samples vote for their
class with weight ``exp(sim / temperature)``; the class with the largest
summed weight is the prediction.

Shape legend: N train samples, T test samples, F feature, C classes,
k neighbours.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from rekd_ray.evaluation.inputs import check_train_test_features

__all__ = ["weighted_knn_accuracy"]

logger = logging.getLogger(__name__)


def weighted_knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, float]:
    """Top-1 accuracy of a similarity-weighted kNN vote, for several k.

    Features are L2-normalized here. A k larger than the train set is
    clamped to N (every train sample votes); the result is still keyed by
    the requested k. Ties between classes go to the smallest class id.
    Memory is O(chunk_size * N): test samples are processed in chunks.

    Args:
        train_features: Shape: (N, F).
        train_labels: Class ids in [0, C). Shape: (N,).
        test_features: Shape: (T, F).
        test_labels: Class ids. Shape: (T,).
        ks: Neighbour counts to evaluate, each >= 1.
        temperature: Softness of the vote weights, > 0.
        num_classes: C; defaults to the largest label + 1.
        chunk_size: Test samples per similarity block.

    Returns:
        ``{k: accuracy in [0, 1]}`` for each k in ``ks``.

    Raises:
        ValueError: On mismatched shapes, an empty train set, a k < 1, a
            non-positive temperature or chunk size.
    """
    check_train_test_features(train_features, train_labels, test_features, test_labels)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be non-empty positive ints; got {tuple(ks)!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    num_train = train_features.shape[0]
    num_test = test_features.shape[0]
    if num_test == 0:
        return {k: 0.0 for k in ks}
    train_labels = train_labels.long()
    test_labels = test_labels.long().to(train_labels.device)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1

    train_unit = F.normalize(train_features.float(), dim=1)  # (N, F)
    test_unit = F.normalize(test_features.float(), dim=1)  # (T, F)
    max_k = min(max(ks), num_train)
    correct = {k: 0 for k in ks}
    for start in range(0, num_test, chunk_size):
        sim = test_unit[start : start + chunk_size] @ train_unit.T  # (t, N)
        top_sim, top_idx = sim.topk(max_k, dim=1)  # (t, max_k), descending
        weights = (top_sim / temperature).exp()  # (t, max_k)
        neighbour_labels = train_labels[top_idx]  # (t, max_k)
        targets = test_labels[start : start + chunk_size]  # (t,)
        for k in ks:
            # Neighbours are sorted, so the first min(k, N) are the k nearest.
            k_used = min(k, num_train)
            scores = weights.new_zeros(len(targets), num_classes)  # (t, C)
            scores.scatter_add_(1, neighbour_labels[:, :k_used], weights[:, :k_used])
            correct[k] += int((scores.argmax(dim=1) == targets).sum())
    accuracies = {k: correct[k] / num_test for k in ks}
    logger.debug("weighted kNN accuracy %s", accuracies)
    return accuracies

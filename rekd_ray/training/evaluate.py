"""Evaluation of a student backbone: the kNN monitor and the final protocol.

* Monitor (every epoch): weighted kNN top-1 on seeded subsets of the train and
  test splits, cheap enough to run each epoch.
* Final: a linear classifier on frozen backbone features (train split, or a
  seeded subset of it) scored on the full test split, plus weighted kNN on the
  same features. Features come from the backbone without the projection head,
  in eval mode.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from rekd_ray.config import ExperimentConfig
from rekd_ray.data.augment import EvalTransform
from rekd_ray.data.datasets import ImageData
from rekd_ray.evaluation.cluster_quality import cluster_quality
from rekd_ray.evaluation.features import extract_features
from rekd_ray.evaluation.knn import weighted_knn_accuracy
from rekd_ray.evaluation.linear import linear_probe_accuracy

__all__ = ["final_evaluation", "monitor_knn", "prototype_quality", "subset"]

logger = logging.getLogger(__name__)


def subset(num_items: int, size: int | None, seed: int) -> torch.Tensor:
    """A seeded random subset of ``range(num_items)``; all of it if ``size`` is
    None or not smaller."""
    if size is None or size >= num_items:
        return torch.arange(num_items)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_items, generator=generator)[:size].sort().values


def _features(backbone, images, config: ExperimentConfig, data: ImageData):
    transform = EvalTransform(config.data.image_size, mean=data.mean, std=data.std)
    device = next(backbone.parameters()).device
    return extract_features(backbone, images, transform, batch_size=512, device=device)


def monitor_knn(
    backbone: nn.Module, data: ImageData, config: ExperimentConfig
) -> float:
    """Weighted kNN top-1 (k = ``eval.knn_k``) on the monitoring subsets."""
    train_rows = subset(data.num_train, config.eval.monitor_train_samples, seed=1)
    test_rows = subset(len(data.test_labels), config.eval.monitor_test_samples, 2)
    train_features = _features(backbone, data.train_images[train_rows], config, data)
    test_features = _features(backbone, data.test_images[test_rows], config, data)
    accuracy = weighted_knn_accuracy(
        train_features,
        data.train_labels[train_rows],
        test_features,
        data.test_labels[test_rows],
        ks=(config.eval.knn_k,),
        temperature=config.eval.knn_temperature,
        num_classes=data.num_classes,
    )
    return accuracy[config.eval.knn_k]


def final_evaluation(
    backbone: nn.Module, data: ImageData, config: ExperimentConfig
) -> dict[str, float]:
    """Linear-probe and kNN top-1 (fractions in [0, 1]) of a frozen backbone."""
    train_rows = subset(data.num_train, config.eval.linear_train_samples, seed=3)
    train_features = _features(backbone, data.train_images[train_rows], config, data)
    test_features = _features(backbone, data.test_images, config, data)
    train_labels = data.train_labels[train_rows]
    linear = linear_probe_accuracy(
        train_features,
        train_labels,
        test_features,
        data.test_labels,
        epochs=config.eval.linear_epochs,
        seed=config.seed,
        num_classes=data.num_classes,
    )
    knn = weighted_knn_accuracy(
        train_features,
        train_labels,
        test_features,
        data.test_labels,
        ks=(config.eval.knn_k,),
        temperature=config.eval.knn_temperature,
        num_classes=data.num_classes,
    )[config.eval.knn_k]
    logger.info("final evaluation: linear_top1=%.4f knn_top1=%.4f", linear, knn)
    return {"linear_top1": linear, "knn_top1": knn}


def prototype_quality(
    assignments: np.ndarray | None, train_labels: torch.Tensor
) -> dict[str, float]:
    """NMI and purity of the prototype assignments against the true labels."""
    if assignments is None:
        return {}
    quality = cluster_quality(assignments, train_labels.numpy())
    return {"prototype_nmi": quality["nmi"], "prototype_purity": quality["purity"]}

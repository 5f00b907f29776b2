"""Linear evaluation: a linear classifier on frozen features.

Features are standardized with the train split's mean and std, then one
``nn.Linear`` layer (zero-initialized, so deterministic) is trained with
cross-entropy by AdamW, batch ``batch_size``, with a per-step cosine decay
of the learning rate to zero; top-1 is measured on the test split. The only
randomness is the shuffling, drawn from a generator seeded with ``seed``.

Measured on the 2-core machine: 60000 x 576 features, 10 classes, 100 epochs
of batch 1024 take about 10 s (2 threads). The default peak learning rate
1e-2 gave 81.3 / 82.1 % top-1 on two Fashion-MNIST students where 1e-3
gave 78.7 / 80.0 % (the same features), so 1e-3 had not converged.

Shape legend: N train samples, T test samples, F feature, C classes,
B batch.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rekd_ray.evaluation.inputs import check_train_test_features

__all__ = ["linear_probe_accuracy"]

logger = logging.getLogger(__name__)


def _train_classifier(
    features: Tensor,
    labels: Tensor,
    classifier: nn.Linear,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """Fit ``classifier`` in place; returns the last epoch's mean loss."""
    num_train = features.shape[0]
    steps_per_epoch = math.ceil(num_train / batch_size)
    total_steps = epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(
        classifier.parameters(), lr=lr, weight_decay=weight_decay
    )
    step, epoch_loss = 0, float("nan")
    for _ in range(epochs):
        order = torch.randperm(num_train, generator=generator)
        loss_sum = torch.zeros((), device=features.device)
        for batch_idx in order.split(batch_size):
            # Cosine decay to zero over all steps, set per step.
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))
            logits = classifier(features[batch_idx])  # (B, C)
            loss = F.cross_entropy(logits, labels[batch_idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            step += 1
        epoch_loss = float(loss_sum) / steps_per_epoch
    return epoch_loss


def linear_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 1024,
    seed: int = 0,
    num_classes: int | None = None,
) -> float:
    """Top-1 test accuracy of a linear classifier on frozen features.

    Args:
        train_features: Shape: (N, F).
        train_labels: Class ids in [0, C). Shape: (N,).
        test_features: Shape: (T, F).
        test_labels: Class ids. Shape: (T,).
        epochs: Passes over the train split.
        lr: Peak AdamW learning rate (cosine-decayed to zero).
        weight_decay: AdamW decoupled weight decay.
        batch_size: Train samples per step, at most; small train splits use
            batches of N / 16 (at least 16) so that every epoch takes several
            optimizer steps instead of one.
        seed: Seed of the shuffling; equal seeds give equal results.
        num_classes: C; defaults to the largest label + 1.

    Returns:
        Test accuracy in [0, 1] (0.0 for an empty test split).

    Raises:
        ValueError: On mismatched shapes or non-positive epochs, lr or batch.
    """
    check_train_test_features(train_features, train_labels, test_features, test_labels)
    for param, value in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size)):
        if value <= 0:
            raise ValueError(f"{param} must be > 0; got {value!r}")
    train_labels = train_labels.long()
    test_labels = test_labels.long()
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
        if test_labels.numel():
            num_classes = max(num_classes, int(test_labels.max()) + 1)

    # Standardize with train statistics only; constant features map to 0.
    train_features = train_features.detach().float()
    mean = train_features.mean(dim=0)  # (F,)
    # A feature counts as constant only relative to the others: a random-init
    # network in eval mode emits features of ~1e-9, which an absolute floor
    # would wipe out (its probe fell from 80.9 % to 66.8 % top-1).
    std = train_features.std(dim=0, unbiased=False)  # (F,)
    constant = std <= 1e-6 * std.max().clamp_min(torch.finfo(std.dtype).tiny)
    std = torch.where(constant, torch.ones_like(std), std)  # (F,)
    train_x = (train_features - mean) / std  # (N, F)
    test_x = (test_features.detach().float() - mean) / std  # (T, F)

    num_train = train_x.shape[0]
    batch_size = min(batch_size, max(16, math.ceil(num_train / 16)))
    classifier = nn.Linear(train_x.shape[1], num_classes).to(train_x.device)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    generator = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        train_loss = _train_classifier(
            train_x,
            train_labels,
            classifier,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            generator=generator,
        )
    if test_x.shape[0] == 0:
        return 0.0
    with torch.no_grad():
        predictions = classifier(test_x).argmax(dim=1)  # (T,)
    hits = predictions == test_labels.to(predictions.device)  # (T,)
    accuracy = float(hits.float().mean())
    logger.debug("linear probe: train_loss=%.4f top1=%.4f", train_loss, accuracy)
    return accuracy

"""Instance-wise InfoNCE (MoCo-v2) with in-batch negatives.

Shape legend: N batch, D embedding, K queue. Every embedding arrives
L2-normalized from the caller; the losses here never renormalize, so a dot
product is a cosine similarity.

The candidate set of anchor ``i`` is the N batch keys followed by the K queue
entries, so the logits are ``(N, N + K)`` and the positive of anchor ``i`` is
column ``i``. :mod:`rekd_ray.losses.relation` uses exactly these logits.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InfoNCELoss", "contrastive_logits", "info_nce_loss"]

Reduction = Literal["mean", "none"]


def reduce_per_anchor(per_anchor: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Return the mean of the per-anchor terms, or the terms for ``"none"``."""
    if reduction == "mean":
        return per_anchor.mean()
    if reduction == "none":
        return per_anchor
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def check_temperature(name: str, temperature: float) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``temperature`` is finite > 0."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"{name} must be a finite number > 0 (typical: 0.07-0.2), "
            f"got {temperature!r}"
        )


def check_contrastive_inputs(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor
) -> None:
    """Validate the (query, key, queue) triple shared by the contrastive losses.

    Args:
        query: Anchor embeddings. Shape: (N, D).
        key: Positive keys, row ``i`` pairs with ``query[i]``. Shape: (N, D).
        queue: Negative (or related) keys from earlier batches. Shape: (K, D),
            K may be 0.

    Raises:
        ValueError: If a tensor is not 2-D, N is 0, or the shapes disagree.
    """
    if query.dim() != 2 or query.shape[0] == 0:
        raise ValueError(
            f"query must have shape (N, D) with N > 0, got {tuple(query.shape)}"
        )
    n, d = query.shape
    if key.shape != query.shape:
        raise ValueError(
            f"key must have the shape of query ({n}, {d}), got {tuple(key.shape)}"
        )
    if queue.dim() != 2 or queue.shape[1] != d:
        raise ValueError(
            f"queue must have shape (K, {d}) to match query's D={d}, "
            f"got {tuple(queue.shape)}"
        )


def contrastive_logits(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Scaled similarities of each anchor to the batch keys, then the queue.

    Args:
        query: L2-normalized anchors. Shape: (N, D).
        key: L2-normalized keys, ``key[i]`` is the positive of ``query[i]``.
            Shape: (N, D).
        queue: L2-normalized queue entries. Shape: (K, D).
        temperature: Softmax temperature tau > 0.

    Returns:
        ``cat([query @ key.T, query @ queue.T], dim=1) / temperature``.
        Shape: (N, N + K); the positive of row ``i`` is column ``i``.

    Raises:
        ValueError: On mismatched shapes or a non-positive temperature.
    """
    check_contrastive_inputs(query, key, queue)
    check_temperature("temperature", temperature)

    sim_batch = torch.einsum("nd,md->nm", query, key)  # (N, N)
    sim_queue = torch.einsum("nd,kd->nk", query, queue)  # (N, K)
    return torch.cat([sim_batch, sim_queue], dim=1) / temperature  # (N, N + K)


def info_nce_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
    *,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """MoCo-v2 InfoNCE with the other batch keys as extra negatives.

    With ``l_i = [q_i . k_1, ..., q_i . k_N, q_i . u_1, ..., q_i . u_K] / tau``
    (``u`` the queue), the loss is ``L = -(1/N) sum_i log softmax(l_i)[i]``,
    i.e. the mean cross-entropy of each anchor against its own key (MoCo,
    arXiv 1911.05722, Eq. 1; MoCo-v2, arXiv 2003.04297), here with the N - 1
    other batch keys added to the K queue negatives.

    Args:
        query: L2-normalized anchors (not renormalized here). Shape: (N, D).
        key: L2-normalized keys of the same samples. Shape: (N, D).
        queue: L2-normalized negatives. Shape: (K, D), K may be 0.
        temperature: Softmax temperature tau > 0.
        reduction: ``"mean"`` (default) or ``"none"`` for the per-anchor terms.

    Returns:
        Scalar loss, mean over the N anchors; shape (N,) for ``"none"``.

    Raises:
        ValueError: On mismatched shapes, a non-positive temperature or an
            unknown reduction.
    """
    logits = contrastive_logits(query, key, queue, temperature)  # (N, N + K)
    labels = torch.arange(logits.shape[0], device=logits.device)  # (N,)
    per_anchor = F.cross_entropy(logits, labels, reduction="none")  # (N,)
    return reduce_per_anchor(per_anchor, reduction)


class InfoNCELoss(nn.Module):
    """Module wrapper of :func:`info_nce_loss` holding the temperature."""

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        check_temperature("temperature", temperature)
        self.temperature = temperature

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor
    ) -> torch.Tensor:
        return info_nce_loss(query, key, queue, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

"""Relation-wise contrastive loss of ReKD (arXiv 2112.04174).

Shape legend: N batch, D embedding, K queue. Every embedding arrives
L2-normalized from the caller; nothing here renormalizes.

A teacher's k-means prototypes label each sample; two samples with the same
prototype are *related*, and related keys join the anchor's own key as
positives. Labels are int64 prototype ids; a negative label means unknown
(not clustered yet): such a sample is related to nothing but itself. The
logits are those of :func:`rekd_ray.losses.infonce.info_nce_loss`, so an
anchor with no related key contributes exactly its InfoNCE term.
"""

from __future__ import annotations

import torch
from torch import nn

from rekd_ray.losses.infonce import (
    Reduction,
    check_temperature,
    contrastive_logits,
    reduce_per_anchor,
)

__all__ = [
    "RelationContrastiveLoss",
    "positives_per_anchor",
    "relation_contrastive_loss",
    "relation_mask",
]


def _check_labels(name: str, labels: torch.Tensor, length: int | None) -> None:
    """Labels must be a 1-D integer tensor, of ``length`` entries if given."""
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise TypeError(
            f"{name} must hold integer prototype ids (int64, -1 = unknown), "
            f"got dtype {labels.dtype}"
        )
    expected = "N" if name == "query_labels" else "K"
    if length is not None:
        expected = f"{expected}={length}"
    if labels.dim() != 1 or (length is not None and labels.shape[0] != length):
        raise ValueError(
            f"{name} must have shape ({expected},), got {tuple(labels.shape)}"
        )


def relation_mask(
    query_labels: torch.Tensor, queue_labels: torch.Tensor
) -> torch.Tensor:
    """Positives of each anchor among the batch keys and the queue.

    Args:
        query_labels: Prototype id of each batch sample (its query and key
            share it); negative means unknown. Shape: (N,).
        queue_labels: Prototype id of each queue entry. Shape: (K,).

    Returns:
        Bool mask, ``True`` at column ``i`` of row ``i`` (own key), at batch
        key ``j`` when ``label_j == label_i >= 0`` and at queue entry ``k``
        when ``queue_label_k == label_i >= 0``. Shape: (N, N + K).

    Raises:
        TypeError: If labels are not integers.
        ValueError: If a label tensor is not 1-D.
    """
    _check_labels("query_labels", query_labels, None)
    _check_labels("queue_labels", queue_labels, None)
    n = query_labels.shape[0]

    # Unknown anchors (label < 0) relate to nothing, even to other unknowns.
    anchor = query_labels.unsqueeze(1)  # (N, 1)
    known = anchor >= 0  # (N, 1)
    own = torch.eye(n, dtype=torch.bool, device=query_labels.device)  # (N, N)
    batch = own | (known & (anchor == query_labels.unsqueeze(0)))  # (N, N)
    queue = known & (anchor == queue_labels.unsqueeze(0))  # (N, K)
    return torch.cat([batch, queue], dim=1)  # (N, N + K)


def positives_per_anchor(
    query_labels: torch.Tensor, queue_labels: torch.Tensor
) -> torch.Tensor:
    """Number of positives ``|P_i|`` of each anchor (own key included).

    Args:
        query_labels: Shape: (N,).
        queue_labels: Shape: (K,).

    Returns:
        Float counts, each >= 1. Shape: (N,).
    """
    return relation_mask(query_labels, queue_labels).sum(dim=1).float()


def relation_contrastive_loss(
    query: torch.Tensor,
    key: torch.Tensor,
    queue: torch.Tensor,
    query_labels: torch.Tensor,
    queue_labels: torch.Tensor,
    temperature: float,
    *,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Contrastive loss with every related key as a positive (ReKD).

    With the InfoNCE logits ``l_i = [q_i . k_1..k_N, q_i . u_1..u_K] / tau``
    and ``P_i`` the positives of anchor ``i`` (own key, plus batch and queue
    keys of the same known prototype), the loss is
    ``L = (1/N) sum_i -(1/|P_i|) sum_{p in P_i} log softmax(l_i)[p]``: the
    relation-wise contrastive loss of ReKD (arXiv 2112.04174, Sec. 3), with
    the log-likelihood averaged over each anchor's positives as in
    supervised contrastive learning (arXiv 2004.11362, L_out). When
    ``P_i = {i}`` the term equals the anchor's InfoNCE term. The log-softmax
    uses logsumexp and ``|P_i| >= 1``, so the loss is finite even when every
    key is related or the logits are large.

    Args:
        query: L2-normalized anchors. Shape: (N, D).
        key: L2-normalized keys of the same samples. Shape: (N, D).
        queue: L2-normalized queue entries. Shape: (K, D).
        query_labels: int64 prototype ids, negative = unknown. Shape: (N,).
        queue_labels: int64 prototype ids of the queue. Shape: (K,).
        temperature: Softmax temperature tau > 0.
        reduction: ``"mean"`` (default) or ``"none"`` for the per-anchor terms.

    Returns:
        Scalar loss, mean over the N anchors; shape (N,) for ``"none"``.

    Raises:
        TypeError: If labels are not integers.
        ValueError: On mismatched shapes, label lengths, a non-positive
            temperature or an unknown reduction.
    """
    logits = contrastive_logits(query, key, queue, temperature)  # (N, N + K)
    n, k = query.shape[0], queue.shape[0]
    _check_labels("query_labels", query_labels, n)
    _check_labels("queue_labels", queue_labels, k)

    # log_softmax with logsumexp: finite for any finite logits.
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (N, N + K)
    mask = relation_mask(query_labels, queue_labels)  # (N, N + K)

    # where() instead of a product, so a -inf log-prob off the mask cannot NaN.
    positive_log_prob = torch.where(mask, log_prob, torch.zeros_like(log_prob))
    num_positives = mask.sum(dim=1).to(log_prob.dtype)  # (N,), each >= 1
    per_anchor = -positive_log_prob.sum(dim=1) / num_positives  # (N,)
    return reduce_per_anchor(per_anchor, reduction)


class RelationContrastiveLoss(nn.Module):
    """Module wrapper of :func:`relation_contrastive_loss`."""

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        check_temperature("temperature", temperature)
        self.temperature = temperature

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        queue: torch.Tensor,
        query_labels: torch.Tensor,
        queue_labels: torch.Tensor,
    ) -> torch.Tensor:
        return relation_contrastive_loss(
            query, key, queue, query_labels, queue_labels, self.temperature
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

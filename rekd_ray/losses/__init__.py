"""Losses: instance-wise InfoNCE, ReKD relation loss, SEED response KD."""

from rekd_ray.losses.infonce import InfoNCELoss, contrastive_logits, info_nce_loss
from rekd_ray.losses.relation import (
    RelationContrastiveLoss,
    positives_per_anchor,
    relation_contrastive_loss,
    relation_mask,
)
from rekd_ray.losses.response import ResponseKDLoss, response_kd_loss

__all__ = [
    "InfoNCELoss",
    "RelationContrastiveLoss",
    "ResponseKDLoss",
    "contrastive_logits",
    "info_nce_loss",
    "positives_per_anchor",
    "relation_contrastive_loss",
    "relation_mask",
    "response_kd_loss",
]

"""Backbones, projection heads and MoCo encoders.

Importing this package imports torch; ``rekd_ray.models.names`` does not.
"""

from rekd_ray.models.backbones import (
    BACKBONE_NAMES,
    Backbone,
    backbone_feature_dim,
    build_backbone,
)
from rekd_ray.models.heads import Encoder, ProjectionHead, build_encoder
from rekd_ray.models.moco import KeyQueue, MoCo, shuffled_forward

__all__ = [
    "BACKBONE_NAMES",
    "Backbone",
    "Encoder",
    "KeyQueue",
    "MoCo",
    "ProjectionHead",
    "backbone_feature_dim",
    "build_backbone",
    "build_encoder",
    "shuffled_forward",
]

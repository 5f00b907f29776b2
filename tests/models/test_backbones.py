"""Backbones: shapes, finite outputs and map sizes at 32 px, stock stems."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rekd_ray.models.backbones import (
    BACKBONE_NAMES,
    Backbone,
    backbone_feature_dim,
    build_backbone,
)
from rekd_ray.models.heads import Encoder, ProjectionHead, build_encoder


@pytest.fixture(scope="module")
def backbones() -> dict[str, Backbone]:
    torch.manual_seed(0)
    return {name: build_backbone(name, image_size=32) for name in BACKBONE_NAMES}


@pytest.mark.parametrize("name", BACKBONE_NAMES)
@pytest.mark.parametrize("train", [True, False])
def test_backbone_output_is_finite_and_flat(
    backbones: dict[str, Backbone], name: str, train: bool
) -> None:
    backbone = backbones[name].train(train)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        features = backbone(images)

    assert backbone.name == name
    assert features.shape == (2, backbone_feature_dim(name))
    assert features.shape[1] == backbone.feature_dim
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_last_map_is_at_least_2x2_at_32px(
    backbones: dict[str, Backbone], name: str
) -> None:
    backbone = backbones[name].eval()

    with torch.no_grad():
        feature_map = backbone.trunk(torch.zeros(1, 3, 32, 32))

    assert min(feature_map.shape[2:]) >= 2


def test_single_image_trains_through_batch_norm() -> None:
    backbone = build_backbone("mobilenet_v3_small").train()

    features = backbone(torch.randn(1, 3, 32, 32))
    features.sum().backward()

    assert torch.isfinite(features).all()


def test_large_images_keep_stock_stems() -> None:
    resnet = build_backbone("resnet18", image_size=224)
    mobilenet = build_backbone("mobilenet_v3_small", image_size=224)
    shufflenet = build_backbone("shufflenet_v2_x1_0", image_size=224)

    assert resnet.trunk[0].stride == (2, 2)
    assert isinstance(resnet.trunk[3], nn.MaxPool2d)
    assert mobilenet.trunk[0][0].stride == (2, 2)
    assert isinstance(shufflenet.trunk[1], nn.MaxPool2d)


def test_unknown_backbone_names_choices() -> None:
    with pytest.raises(ValueError, match=r"resnet18.*got 'vgg11'"):
        build_backbone("vgg11")
    with pytest.raises(ValueError, match="got 'vgg11'"):
        backbone_feature_dim("vgg11")


def test_encoder_projects_to_out_dim() -> None:
    encoder = build_encoder("alexnet", hidden_dim=16, out_dim=8)

    embeddings = encoder(torch.randn(2, 3, 32, 32))

    assert embeddings.shape == (2, 8)
    assert isinstance(encoder.head.mlp[1], nn.ReLU)


def test_encoder_rejects_mismatched_head() -> None:
    backbone = build_backbone("alexnet")

    with pytest.raises(ValueError, match="head.in_dim must equal"):
        Encoder(backbone, ProjectionHead(in_dim=7))

"""Student and teacher backbones: torchvision networks adapted to small images.

Every backbone is built from torchvision with random weights (``weights=None``;
nothing is downloaded), its classifier removed, and global average pooling
applied to its last feature map, so it maps images to flat features.

At ``image_size <= 64`` the stems are adapted so that no feature map shrinks
to zero and batch norm never normalizes a 1x1 map of a single image in
training: the last feature map is at least 2x2 at 32 px. Larger images use
the stock ImageNet stems.

Measured at 32x32 (``FlopCounterMode``; 1 multiply-add = 2 FLOPs; forward of
one image). img/s: train-mode forward+backward of a batch of 64 images, fp32,
2 threads, best of 6 on the shared 2-core development machine (other jobs
running: repeated runs varied by up to 4x, so compare orders of magnitude).

| backbone | change at <= 64 px | F | map | MFLOPs | params | img/s |
| --- | --- | --- | --- | --- | --- | --- |
| alexnet | conv1 5x5/2, last max-pool dropped | 256 | 3x3 | 71 | 2.45M | 820 |
| mobilenet_v3_small | first conv stride 1 | 576 | 2x2 | 9.8 | 0.93M | 425 |
| mobilenet_v3_large | first conv stride 1 | 960 | 2x2 | 38 | 2.97M | 173 |
| shufflenet_v2_x1_0 | max-pool dropped | 1024 | 2x2 | 22 | 1.25M | 437 |
| efficientnet_b0 | first conv stride 1 | 1280 | 2x2 | 64 | 4.01M | 86 |
| resnet18 | CIFAR stem: 3x3/1, no max-pool | 512 | 4x4 | 1111 | 11.17M | 49 |
| resnet50 | CIFAR stem: 3x3/1, no max-pool | 2048 | 4x4 | 2596 | 23.50M | 13 |

All classifiers are removed; AlexNet's 6x6 adaptive pool is replaced by the
global average pool of :class:`Backbone`, so F does not depend on image size.

Shape legend: B batch, F feature (``feature_dim``), H/W image height/width.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import Tensor, nn
from torchvision import models

from rekd_ray.models.names import BACKBONE_NAMES

__all__ = ["BACKBONE_NAMES", "Backbone", "backbone_feature_dim", "build_backbone"]

logger = logging.getLogger(__name__)


# Largest image side that gets the small-image stems; above it, stock stems.
SMALL_IMAGE_MAX_SIZE = 64

_FEATURE_DIMS: dict[str, int] = {
    "alexnet": 256,
    "mobilenet_v3_small": 576,
    "mobilenet_v3_large": 960,
    "shufflenet_v2_x1_0": 1024,
    "efficientnet_b0": 1280,
    "resnet18": 512,
    "resnet50": 2048,
}


class Backbone(nn.Module):
    """A convolutional trunk followed by global average pooling.

    Attributes:
        name: One of :data:`BACKBONE_NAMES`.
        feature_dim: Size F of the pooled feature vector.
        trunk: The network up to its last feature map (no pooling, no
            classifier).
    """

    def __init__(self, name: str, trunk: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.name = name
        self.feature_dim = feature_dim
        self.trunk = trunk

    def forward(self, images: Tensor) -> Tensor:
        """Embed images as flat features.

        Args:
            images: Float images. Shape: (B, 3, H, W).

        Returns:
            Globally average-pooled features. Shape: (B, F).
        """
        feature_map = self.trunk(images)  # (B, F, h, w)
        return feature_map.mean(dim=(2, 3))  # (B, F)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}"


def _check_name(name: str) -> None:
    if name not in BACKBONE_NAMES:
        raise ValueError(f"backbone name must be one of {BACKBONE_NAMES}; got {name!r}")


def backbone_feature_dim(name: str) -> int:
    """Return the feature size F of a backbone without building it.

    Raises:
        ValueError: If ``name`` is not in :data:`BACKBONE_NAMES`.
    """
    _check_name(name)
    return _FEATURE_DIMS[name]


def _alexnet_trunk(small: bool) -> nn.Module:
    features = models.alexnet(weights=None).features
    if small:
        # 32 -> 16 (conv1) -> 7 -> 3 (pools); a third pool would give 1x1.
        features[0] = nn.Conv2d(3, 64, kernel_size=5, stride=2, padding=2)
        features[12] = nn.Identity()
    return features


def _mobilenet_trunk(name: str, small: bool) -> nn.Module:
    features = getattr(models, name)(weights=None).features
    if small:
        # Total stride 32 -> 16: 2x2 at 32 px instead of 1x1.
        features[0][0].stride = (1, 1)
    return features


def _efficientnet_trunk(small: bool) -> nn.Module:
    return _mobilenet_trunk("efficientnet_b0", small)


def _shufflenet_trunk(small: bool) -> nn.Module:
    net = models.shufflenet_v2_x1_0(weights=None)
    # Total stride 32 -> 16 without the max-pool: 2x2 at 32 px.
    maxpool = nn.Identity() if small else net.maxpool
    return nn.Sequential(
        net.conv1, maxpool, net.stage2, net.stage3, net.stage4, net.conv5
    )


def _resnet_trunk(name: str, small: bool) -> nn.Module:
    net = getattr(models, name)(weights=None)
    if small:
        # CIFAR stem: total stride 32 -> 8, a 4x4 map at 32 px.
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    return nn.Sequential(
        net.conv1,
        net.bn1,
        net.relu,
        net.maxpool,
        net.layer1,
        net.layer2,
        net.layer3,
        net.layer4,
    )


_TRUNK_BUILDERS: dict[str, Callable[[bool], nn.Module]] = {
    "alexnet": _alexnet_trunk,
    "mobilenet_v3_small": lambda small: _mobilenet_trunk("mobilenet_v3_small", small),
    "mobilenet_v3_large": lambda small: _mobilenet_trunk("mobilenet_v3_large", small),
    "shufflenet_v2_x1_0": _shufflenet_trunk,
    "efficientnet_b0": _efficientnet_trunk,
    "resnet18": lambda small: _resnet_trunk("resnet18", small),
    "resnet50": lambda small: _resnet_trunk("resnet50", small),
}


# torchvision's MobileNet-V3 sets BN momentum 0.01, tuned for ImageNet schedules
# of ~10^5 steps. Our CPU runs take a few hundred steps, after which such
# running statistics are still mostly their initial values and eval-mode
# features (kNN, linear probe) are distorted. All backbones use 0.1 (PyTorch's
# default, which the other torchvision models already use).
BATCHNORM_MOMENTUM = 0.1


def _set_batchnorm_momentum(module: nn.Module, momentum: float) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.momentum = momentum


def build_backbone(name: str, image_size: int = 32) -> Backbone:
    """Build a randomly initialized backbone for square images.

    Args:
        name: One of :data:`BACKBONE_NAMES`.
        image_size: Side of the input images. Up to
            :data:`SMALL_IMAGE_MAX_SIZE` the small-image stems of the module
            table are used; above it the stock ImageNet stems.

    Returns:
        The backbone, in train mode, on the CPU, in float32.

    Raises:
        ValueError: If ``name`` is unknown or ``image_size`` is not positive.
    """
    _check_name(name)
    if image_size < 1:
        raise ValueError(f"image_size must be a positive int; got {image_size!r}")
    small = image_size <= SMALL_IMAGE_MAX_SIZE
    trunk = _TRUNK_BUILDERS[name](small)
    _set_batchnorm_momentum(trunk, BATCHNORM_MOMENTUM)
    logger.debug("built %s (image_size=%d, small stem=%s)", name, image_size, small)
    return Backbone(name, trunk, _FEATURE_DIMS[name])

"""Feature extraction: shapes, eval-mode outputs, untouched state and modes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rekd_ray.evaluation.features import extract_features
from rekd_ray.models.backbones import BACKBONE_NAMES, build_backbone


class _TinyBNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.dropout = nn.Dropout(0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.bn(self.conv(images))).mean(dim=(2, 3))


def _to_float_rgb(batch: torch.Tensor) -> torch.Tensor:
    return batch.float().div(255).expand(-1, 3, -1, -1)


def _uint8_images(num_images: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (num_images, 8, 8), generator=generator).byte()


def test_state_is_bit_identical_and_modes_restored() -> None:
    torch.manual_seed(0)
    net = _TinyBNNet().train()
    net.bn.eval()  # a caller's deliberate mixed mode must survive
    before = {name: t.clone() for name, t in net.state_dict().items()}

    features = extract_features(net, _uint8_images(5), _to_float_rgb, batch_size=2)

    assert features.shape == (5, 4) and features.dtype == torch.float32
    after = net.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert net.training and net.conv.training and net.dropout.training
    assert not net.bn.training


def test_runs_in_eval_mode_and_batches_agree() -> None:
    torch.manual_seed(0)
    net = _TinyBNNet().train()
    images = _uint8_images(5)

    features = extract_features(net, images, _to_float_rgb, batch_size=2)
    whole = extract_features(net, images, _to_float_rgb, batch_size=512)
    with torch.no_grad():
        expected = net.eval()(_to_float_rgb(images.unsqueeze(1)))

    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(features, whole)


def test_channel_first_images_pass_through() -> None:
    net = _TinyBNNet()
    images = _uint8_images(3).unsqueeze(1)  # (3, 1, 8, 8)

    features = extract_features(net, images, _to_float_rgb)

    assert features.shape == (3, 4)


def test_bad_image_rank_raises() -> None:
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, C, H, W\)"):
        extract_features(_TinyBNNet(), torch.zeros(8, 8), _to_float_rgb)


def _pad_to_32(batch: torch.Tensor) -> torch.Tensor:
    # (B, 1, 28, 28) uint8 -> (B, 3, 32, 32) float, as for Fashion-MNIST.
    images = nn.functional.pad(batch.float().div(255), (2, 2, 2, 2))
    return images.expand(-1, 3, -1, -1)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_every_backbone_embeds_transformed_images(name: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(name, image_size=32)
    images = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)

    features = extract_features(backbone, images, _pad_to_32)

    assert features.shape == (2, backbone.feature_dim)
    assert torch.isfinite(features).all()
    assert backbone.training

"""Projection head and encoder (backbone + head) used by MoCo and ReKD.

ReKD (arXiv:2112.04174, implementation details) replaces each backbone's
classifier by the MoCo-v2 MLP head (arXiv:2003.04297): linear, ReLU, linear,
128-d output.

Shape legend: B batch, F backbone feature, D embedding (``out_dim``).
"""

from __future__ import annotations

from torch import Tensor, nn

from rekd_ray.models.backbones import Backbone, build_backbone

__all__ = ["Encoder", "ProjectionHead", "build_encoder"]


class ProjectionHead(nn.Module):
    """MLP head ``Linear(F, hidden) -> ReLU -> Linear(hidden, D)``.

    Args:
        in_dim: Input feature size F.
        hidden_dim: Width of the hidden layer.
        out_dim: Embedding size D.

    Raises:
        ValueError: If a size is not positive.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        for param, value in (
            ("in_dim", in_dim),
            ("hidden_dim", hidden_dim),
            ("out_dim", out_dim),
        ):
            if value < 1:
                raise ValueError(f"{param} must be a positive int; got {value!r}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, features: Tensor) -> Tensor:
        """Project features.

        Args:
            features: Backbone features. Shape: (B, F).

        Returns:
            Embeddings, not normalized. Shape: (B, D).
        """
        return self.mlp(features)


class Encoder(nn.Module):
    """A backbone followed by a projection head.

    Args:
        backbone: Maps images to (B, F) features.
        head: Projection head whose ``in_dim`` equals ``backbone.feature_dim``.

    Raises:
        ValueError: If the head's input size does not match the backbone.
    """

    def __init__(self, backbone: Backbone, head: ProjectionHead) -> None:
        super().__init__()
        if head.in_dim != backbone.feature_dim:
            raise ValueError(
                f"head.in_dim must equal backbone.feature_dim="
                f"{backbone.feature_dim} ({backbone.name}); got {head.in_dim}"
            )
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        """Embed images.

        Args:
            images: Float images. Shape: (B, 3, H, W).

        Returns:
            Embeddings, not normalized. Shape: (B, D).
        """
        return self.head(self.backbone(images))


def build_encoder(
    backbone: str,
    *,
    hidden_dim: int = 512,
    out_dim: int = 128,
    image_size: int = 32,
) -> Encoder:
    """Build a randomly initialized backbone with a fresh projection head.

    Args:
        backbone: One of ``BACKBONE_NAMES``.
        hidden_dim: Hidden width of the head.
        out_dim: Embedding size D.
        image_size: Image side, see :func:`build_backbone`.
    """
    net = build_backbone(backbone, image_size=image_size)
    return Encoder(net, ProjectionHead(net.feature_dim, hidden_dim, out_dim))

"""Frozen-backbone feature extraction for linear and kNN evaluation.

Shape legend: N images, B batch, C channels, H/W image size, S transformed
image size, F feature.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["extract_features"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: Tensor,
    transform: Callable[[Tensor], Tensor],
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Embed a whole image set with a backbone in eval mode.

    The backbone runs in eval mode (BN uses its running statistics and is not
    updated); afterwards the train/eval flag of every submodule is restored,
    so parameters, buffers and modes are exactly as before the call.

    Args:
        backbone: Maps (B, 3, S, S) float images to (B, F) features; must
            already live on ``device``.
        images: Images, usually uint8. A (N, H, W) tensor gets a channel
            dimension first. Shape: (N, H, W) or (N, C, H, W).
        transform: Maps one batch (B, C, H, W) of ``images`` to float
            backbone input (B, 3, S, S), e.g. resize and normalize.
        batch_size: Images per forward.
        device: Where batches are sent and the backbone runs.

    Returns:
        Features on the CPU, float32. Shape: (N, F).

    Raises:
        ValueError: If ``images`` is not 3-d or 4-d or ``batch_size`` < 1.
    """
    if images.ndim not in (3, 4):
        raise ValueError(
            f"images must have shape (N, H, W) or (N, C, H, W); "
            f"got {tuple(images.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if images.ndim == 3:
        images = images.unsqueeze(1)  # (N, 1, H, W)

    # Remember every submodule's flag: a caller may freeze parts on purpose.
    modes = [module.training for module in backbone.modules()]
    backbone.eval()
    try:
        chunks = [
            backbone(transform(batch.to(device))).float().cpu()  # (B, F)
            for batch in images.split(batch_size)
        ]
    finally:
        for module, mode in zip(backbone.modules(), modes, strict=True):
            module.training = mode
    features = torch.cat(chunks)  # (N, F)
    logger.debug("extracted features %s", tuple(features.shape))
    return features

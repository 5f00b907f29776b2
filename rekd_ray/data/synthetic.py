"""Small class-dependent grayscale images for tests and benchmarks.

Shape legend: N samples, S image side in pixels.

Class ``k`` of ``K`` is a bright bar at angle ``pi * k / K`` (plus a small
per-sample angle jitter) whose centre sits at a class-specific offset from
the middle, shifted at random by a few pixels per sample, on a noisy
background with random contrast. Raw-pixel 1-NN clearly beats chance
(about 0.8 for 4 classes and 512 train samples, chance 0.25) but is not perfect, so a
learned embedding has room to improve on it.
"""

from __future__ import annotations

import math

import torch

__all__ = ["make_synthetic_images"]


def make_synthetic_images(
    num_samples: int, num_classes: int, image_size: int = 28, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make ``num_samples`` images with balanced random labels.

    Args:
        num_samples: N, number of images.
        num_classes: K >= 2, number of classes (bar orientations).
        image_size: S, side of the square images in pixels.
        seed: seed of a private generator; the global RNG is untouched.

    Returns:
        ``(images, labels)``: uint8 images and int64 labels in ``0..K-1``.
        Shape: images (N, S, S), labels (N,).

    Raises:
        ValueError: ``num_samples < 1``, ``num_classes < 2`` or ``image_size < 8``.
    """
    if num_samples < 1 or num_classes < 2 or image_size < 8:
        raise ValueError(
            "need num_samples >= 1, num_classes >= 2, image_size >= 8; got "
            f"{num_samples}, {num_classes}, {image_size}"
        )
    gen = torch.Generator().manual_seed(seed)
    n, s = num_samples, image_size
    labels = torch.randperm(n, generator=gen) % num_classes  # balanced, shuffled

    # Class-specific orientation and centre offset, jittered per sample.
    angle = math.pi * labels / num_classes + 0.3 * torch.randn(n, generator=gen)
    class_offset = 0.15 * s * torch.cos(2 * math.pi * labels / num_classes)  # (N,)
    shift = torch.randint(-4, 5, (n, 2), generator=gen).float()  # (N, 2)
    centre_x = s / 2 + class_offset + shift[:, 0]
    centre_y = s / 2 + shift[:, 1]

    # Distance of every pixel to the bar's line through its centre.
    coords = torch.arange(s, dtype=torch.float32)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")  # (S, S) each
    dx = xs - centre_x.view(n, 1, 1)  # (N, S, S)
    dy = ys - centre_y.view(n, 1, 1)
    normal_x, normal_y = -torch.sin(angle), torch.cos(angle)  # (N,)
    dist = dx * normal_x.view(n, 1, 1) + dy * normal_y.view(n, 1, 1)  # (N, S, S)
    along = dx * normal_y.view(n, 1, 1) - dy * normal_x.view(n, 1, 1)
    width = 0.06 * s
    bar = torch.exp(-0.5 * (dist / width) ** 2) * (along.abs() < 0.35 * s)

    contrast = 0.5 + 0.5 * torch.rand(n, 1, 1, generator=gen)
    noise = 0.35 * torch.randn(n, s, s, generator=gen)
    pixels = 0.15 + contrast * bar + noise
    images = (pixels.clamp(0.0, 1.0) * 255).round().to(torch.uint8)
    return images, labels.long()

"""Batched two-view augmentation (MoCo v2 style) and the eval transform.

Shape legend: B batch, C input channels (1 or 3), H x W input size,
S output size (``image_size``).

The two views come from ``kornia.augmentation`` applied to the whole batch
with per-sample parameters (``same_on_batch=False``): each image, in each
view, gets its own random resized crop, horizontal flip and, with
probability ``jitter_prob``, brightness/contrast jitter with torchvision's
formulas (``kornia.augmentation.ColorJitter``; ``ColorJiggle`` adds the
brightness factor instead of multiplying by it). Grayscale is augmented on
one channel, then repeated to 3 channels and normalized.

Random numbers come from torch's default CPU RNG, so ``torch.manual_seed``
and DataLoader worker seeding make the views reproducible and different
across workers and epochs. kornia takes no ``torch.Generator``; when one is
given we draw a seed from it and run kornia under ``torch.random.fork_rng``
with that seed, which leaves the global RNG untouched.

NOTE: choice by measurement (256 Fashion-MNIST test images, 28 -> 32 px,
two views, 2 torch threads, median of 5-7 runs on the 2-core shared dev
machine, so +-30% noise):

* torchvision v2 applied per sample (earlier):           ~850 view pairs/s
* kornia 0.9.0, per-sample params, ColorJitter, 1 ch:  7,400-8,700 pairs/s
  (4,800 when the gray image is expanded to 3 channels first; 13,000 with
  ColorJiggle's additive brightness)
* own torch ops, per-sample params (``F.affine_grid`` + ``F.grid_sample``
  crop/flip/resize in one pass, broadcast jitter):    37,000-47,000 pairs/s

The training step consumes ~300-900 images/s, so kornia keeps ~8x headroom
on one core pair and more with DataLoader workers: the library wins over the
~4-5x faster hand-written version, which would be ~90 more lines of crop
geometry and RNG to own. Revisit if a faster step (GPU) becomes input-bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia import augmentation as K

from rekd_ray.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = ["EvalTransform", "TwoViewAugmentation"]

_DEFAULT_MEAN = (FASHION_MNIST_MEAN,) * 3
_DEFAULT_STD = (FASHION_MNIST_STD,) * 3


def _to_float_bchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) or (B, C, H, W), C in {1, 3} -> float32 in [0, 1].

    Shape: returns (B, C, H, W); a 3-dim input gets C = 1.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got dtype {images.dtype}")
    if images.dim() == 3:
        images = images.unsqueeze(1)  # (B, 1, H, W)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            "images must have shape (B, H, W) or (B, C, H, W) with C in {1, 3}, "
            f"got {tuple(images.shape)}"
        )
    return images.float().div_(255.0)


def _normalizer(mean, std) -> K.Normalize:
    mean_t = torch.as_tensor(mean, dtype=torch.float32)
    std_t = torch.as_tensor(std, dtype=torch.float32)
    if mean_t.shape != (3,) or std_t.shape != (3,) or bool((std_t <= 0).any()):
        raise ValueError(
            f"mean and std must be 3 floats with std > 0, got mean={mean} std={std}"
        )
    return K.Normalize(mean=mean_t, std=std_t)


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Repeat grayscale to 3 channels. Shape: (B, C, S, S) -> (B, 3, S, S)."""
    return x.expand(-1, 3, -1, -1)


class TwoViewAugmentation:
    """Two independently augmented views of each image in a batch.

    Random resized crop (area ``scale``, aspect ``ratio``) to ``image_size``,
    horizontal flip with ``flip_prob``, with probability ``jitter_prob`` a
    brightness and contrast factor drawn from ``[1 - x, 1 + x]``, grayscale
    repeated to 3 channels, then ``(x - mean) / std``.

    Args:
        image_size: output side S in pixels.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height).
        flip_prob: probability of a horizontal flip.
        brightness: brightness jitter strength (0 turns it off).
        contrast: contrast jitter strength (0 turns it off).
        jitter_prob: probability of applying the jitter to a sample.
        mean: per-channel mean of the [0, 1] pixels.
        std: per-channel std of the [0, 1] pixels.
    """

    def __init__(
        self,
        image_size: int = 32,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        brightness: float = 0.4,
        contrast: float = 0.4,
        jitter_prob: float = 0.8,
        mean: tuple[float, float, float] = _DEFAULT_MEAN,
        std: tuple[float, float, float] = _DEFAULT_STD,
    ) -> None:
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        for name, value in (("brightness", brightness), ("contrast", contrast)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        self.image_size = image_size
        steps = [
            K.RandomResizedCrop((image_size, image_size), scale=scale, ratio=ratio),
            K.RandomHorizontalFlip(p=flip_prob),
        ]
        if (brightness > 0 or contrast > 0) and jitter_prob > 0:
            steps.append(K.ColorJitter(brightness, contrast, 0.0, 0.0, p=jitter_prob))
        self.augment = torch.nn.Sequential(*steps)
        self.normalize = _normalizer(mean, std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.augment}, {self.normalize})"

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch twice.

        Args:
            images: uint8. Shape: (B, H, W) or (B, C, H, W), C in {1, 3}.
            generator: RNG for all random parameters; None uses torch's
                default RNG.

        Returns:
            Two normalized float32 views. Shape: (B, 3, S, S) each.
        """
        x = _to_float_bchw(images)  # (B, C, H, W)
        if generator is None:
            return self.view(x), self.view(x)

        # kornia samples from the global RNG: seed a forked copy from generator.
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.view(x), self.view(x)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """One augmented view of float images in [0, 1].

        Shape: (B, C, H, W) -> (B, 3, S, S).
        """
        return self.normalize(_to_rgb(self.augment(x)))


class EvalTransform:
    """Deterministic resize to ``image_size``, 3 channels, normalization.

    Args:
        image_size: output side S in pixels.
        mean: per-channel mean of the [0, 1] pixels.
        std: per-channel std of the [0, 1] pixels.
    """

    def __init__(
        self,
        image_size: int = 32,
        mean: tuple[float, float, float] = _DEFAULT_MEAN,
        std: tuple[float, float, float] = _DEFAULT_STD,
    ) -> None:
        self.image_size = image_size
        self.normalize = _normalizer(mean, std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size})"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Resize and normalize a batch.

        Args:
            images: uint8. Shape: (B, H, W) or (B, C, H, W), C in {1, 3}.

        Returns:
            Normalized float32 images. Shape: (B, 3, S, S).
        """
        x = _to_float_bchw(images)  # (B, C, H, W)
        size = (self.image_size, self.image_size)
        if x.shape[-2:] != size:
            x = F.interpolate(
                x, size=size, mode="bilinear", align_corners=False, antialias=True
            )
        return self.normalize(_to_rgb(x))

"""Class-per-folder image sets (ImageNet layout), decoded into memory.

Shape legend: N samples, S image side in pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

if TYPE_CHECKING:
    from rekd_ray.data.datasets import ImageData

__all__ = ["load_image_folder", "train_dir", "eval_dir"]

logger = logging.getLogger(__name__)

_LAYOUT = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (or ROOT/test)"
_STATS_SAMPLES = 1000


def train_dir(root: str | Path) -> Path:
    """``root/train``; raises FileNotFoundError naming data.root if absent."""
    path = Path(root) / "train"
    if not path.is_dir():
        raise FileNotFoundError(
            f"data.root={root}: no {path} directory; image_folder expects {_LAYOUT}"
        )
    return path


def eval_dir(root: str | Path) -> Path:
    """``root/val``, else ``root/test``; raises FileNotFoundError if neither."""
    for name in ("val", "test"):
        if (Path(root) / name).is_dir():
            return Path(root) / name
    raise FileNotFoundError(
        f"data.root={root}: neither val/ nor test/ exists; image_folder expects "
        f"{_LAYOUT}"
    )


def _decode(
    folder: ImageFolder, image_size: int, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and resize the images at ``rows`` (all if None), in that order.

    Shape: (N, 3, S, S) uint8, (N,) int64.
    """
    rows = torch.arange(len(folder)) if rows is None else rows
    samples = [folder.samples[int(row)] for row in rows]
    images = torch.empty(len(samples), 3, image_size, image_size, dtype=torch.uint8)
    for i, (path, _) in enumerate(samples):
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize(
                (image_size, image_size), Image.Resampling.BILINEAR
            )
        images[i] = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)  # (3, S, S)
    labels = torch.tensor([target for _, target in samples], dtype=torch.int64)
    return images, labels


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean/std of [0, 1] pixels over a seeded sample of images."""
    gen = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(images), generator=gen)[:_STATS_SAMPLES]
    pixels = images[pick].double().div(255).transpose(0, 1).flatten(1)  # (3, ...)
    mean = tuple(float(v) for v in pixels.mean(dim=1))
    std = tuple(max(float(v), 1e-3) for v in pixels.std(dim=1))
    return mean, std


Chooser = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


def load_image_folder(
    root: str | Path, image_size: int, choose: Chooser | None = None
) -> ImageData:
    """Load ``root/train`` and ``root/val`` (or ``root/test``) into memory.

    Uses ``torchvision.datasets.ImageFolder`` for the layout (one folder per
    class, classes sorted by name), decodes every image with PIL, converts it
    to RGB and resizes it to ``image_size`` x ``image_size``.

    NOTE: the whole decoded set is held in RAM (N * 3 * S * S bytes: 150 MB
    for 50000 images at 32 px, 193 GB for ImageNet's 1.28M at 224 px), in
    every Train worker and in the driver. ``choose`` (``data.train_subset``)
    bounds it; the full ImageNet needs a streaming path (decode in DataLoader
    workers), which is future work.

    Args:
        root: directory with ``train/`` and ``val/`` (or ``test/``).
        image_size: S, side of the decoded square images.
        choose: maps the (train, test) sizes to the rows to decode, in the
            order to keep them; None decodes everything in folder order.

    Returns:
        :class:`rekd_ray.data.datasets.ImageData` with uint8 images
        (Shape: (N, 3, S, S)), int64 labels (Shape: (N,)), the number of
        classes and the per-channel mean/std of up to 1000 train images.

    Raises:
        FileNotFoundError: a folder is missing (names data.root and the layout).
        ValueError: train and val/test hold different class folders.
    """
    from rekd_ray.data.datasets import ImageData  # noqa: F811 (import cycle)

    train = ImageFolder(str(train_dir(root)))
    test = ImageFolder(str(eval_dir(root)))
    if train.classes != test.classes:
        raise ValueError(
            f"data.root={root}: train classes {train.classes} differ from "
            f"{Path(test.root).name} classes {test.classes}"
        )
    train_rows, test_rows = (
        choose(len(train), len(test)) if choose is not None else (None, None)
    )
    train_images, train_labels = _decode(train, image_size, train_rows)
    test_images, test_labels = _decode(test, image_size, test_rows)
    mean, std = _channel_stats(train_images)
    logger.info(
        "image_folder %s: %d train, %d test images, %d classes, %d px",
        root,
        len(train_images),
        len(test_images),
        len(train.classes),
        image_size,
    )
    return ImageData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=len(train.classes),
        mean=mean,
        std=std,
    )

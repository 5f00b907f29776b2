"""Datasets, loaders and the in-memory image sets they draw from.

Shape legend: N samples, B batch, C channels (1 or 3), H x W stored image
size, S augmented image size.

Images live in memory as uint8 tensors; augmentation runs on whole batches
through ``Dataset.__getitems__`` (the DataLoader's batched fetch), so each
worker produces a ready batch with one kornia call per view and the collate
function only passes it through.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets import ImageFolder

from rekd_ray.data.augment import EvalTransform, TwoViewAugmentation
from rekd_ray.data.fashion_mnist import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    DatasetMissingError,
    check_fashion_mnist,
    load_fashion_mnist,
)
from rekd_ray.data.image_folder import eval_dir, load_image_folder, train_dir
from rekd_ray.data.synthetic import make_synthetic_images

if TYPE_CHECKING:
    from rekd_ray.config import DataConfig

__all__ = [
    "EvalDataset",
    "ImageData",
    "PretrainDataset",
    "dataset_size",
    "eval_loader",
    "load_dataset",
    "pretrain_loader",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_SIZES = {"train": 60000, "test": 10000}


class PretrainDataset(Dataset):
    """Two augmented views per image, for the contrastive/ReKD step.

    Args:
        images: uint8. Shape: (N, H, W) or (N, C, H, W).
        augmentation: makes the two views.
    """

    def __init__(self, images: torch.Tensor, augmentation: TwoViewAugmentation):
        self.images = images
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One sample. Shape: views (3, S, S) each, plus the int index."""
        view_1, view_2 = self.augmentation(self.images[index : index + 1])
        return view_1[0], view_2[0], index

    def __getitems__(
        self, indices: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch in one augmentation call.

        Shape: views (B, 3, S, S) each, indices (B,) int64.
        """
        index = torch.as_tensor(indices, dtype=torch.int64)
        view_1, view_2 = self.augmentation(self.images[index])
        return view_1, view_2, index


class EvalDataset(Dataset):
    """Deterministically transformed images with labels (kNN, linear probe).

    Args:
        images: uint8. Shape: (N, H, W) or (N, C, H, W).
        labels: int64. Shape: (N,).
        transform: resize + normalize.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, transform: EvalTransform
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """One sample. Shape: image (3, S, S), plus the int label."""
        return self.transform(self.images[index : index + 1])[0], int(
            self.labels[index]
        )

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch. Shape: images (B, 3, S, S), labels (B,) int64."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.transform(self.images[index]), self.labels[index]


def _pass_through(batch):
    """Collate for ``__getitems__`` batches, which arrive already stacked."""
    return batch


def pretrain_loader(
    dataset: PretrainDataset,
    batch_size: int,
    *,
    sampler: Sampler | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int | None = None,
) -> DataLoader:
    """Batches of ``(view_1, view_2, indices)`` for pretraining.

    Args:
        dataset: the two-view dataset.
        batch_size: B.
        sampler: e.g. a ``DistributedSampler``; overrides ``shuffle``. The
            caller calls its ``set_epoch`` each epoch.
        shuffle: reshuffle every epoch (ignored when ``sampler`` is given).
        drop_last: drop the last incomplete batch.
        num_workers: DataLoader worker processes.
        seed: seeds the generator for the shuffle order and the workers'
            base seed; None draws them from torch's default RNG.

    Returns:
        A DataLoader yielding views (B, 3, S, S) each and indices (B,) int64.
    """
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=_pass_through,
        generator=generator,
        persistent_workers=False,
    )


def eval_loader(
    dataset: EvalDataset, batch_size: int, num_workers: int = 0
) -> DataLoader:
    """Ordered batches of ``(images (B, 3, S, S), labels (B,))``, none dropped."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        collate_fn=_pass_through,
    )


@dataclass(frozen=True)
class ImageData:
    """A train/test split in memory.

    Attributes:
        train_images: uint8. Shape: (N, H, W) or (N, C, H, W).
        train_labels: int64. Shape: (N,).
        test_images: uint8, same layout as train_images.
        test_labels: int64.
        num_classes: number of classes.
        mean: per-channel mean of [0, 1] train pixels.
        std: per-channel std of [0, 1] train pixels.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_train(self) -> int:
        return len(self.train_images)


def _dataset_name(config: DataConfig) -> str:
    return str(getattr(config.dataset, "value", config.dataset))


def _check_subset(key: str, subset: int | None, size: int, split: str) -> int:
    """The number of samples to keep; raises if ``subset`` exceeds the split."""
    if subset is None:
        return size
    if subset > size:
        raise ValueError(
            f"data.{key}: {subset} is larger than the {split} split ({size} "
            f"samples); use at most {size} or leave it unset"
        )
    return subset


def _check_root(config: DataConfig) -> None:
    if not Path(config.root).is_dir():
        raise DatasetMissingError(
            f"data.root={config.root} does not exist; set data.root to the "
            f"{_dataset_name(config)} directory"
            + (
                " (apt-get install dataset-fashion-mnist)"
                if _dataset_name(config) == "fashion_mnist"
                else ""
            )
        )


def _load_full(config: DataConfig, seed: int) -> ImageData:
    """The whole train and test splits of ``config.dataset``."""
    name = _dataset_name(config)
    if name == "synthetic":
        n_train = config.synthetic_train_samples
        images, labels = make_synthetic_images(
            n_train + config.synthetic_test_samples,
            config.synthetic_classes,
            seed=seed,
        )
        pixel = images[:n_train].double().div(255)
        return ImageData(
            images[:n_train],
            labels[:n_train],
            images[n_train:],
            labels[n_train:],
            num_classes=config.synthetic_classes,
            mean=(float(pixel.mean()),) * 3,
            std=(float(pixel.std()),) * 3,
        )
    _check_root(config)
    if name == "fashion_mnist":
        train = load_fashion_mnist(config.root, "train")
        test = load_fashion_mnist(config.root, "test")
        return ImageData(
            *train,
            *test,
            num_classes=10,
            mean=(FASHION_MNIST_MEAN,) * 3,
            std=(FASHION_MNIST_STD,) * 3,
        )
    if name == "image_folder":
        return load_image_folder(config.root, config.image_size)
    raise ValueError(
        f"data.dataset must be fashion_mnist, image_folder or synthetic, got {name!r}"
    )


def load_dataset(config: DataConfig, seed: int = 0) -> ImageData:
    """Load ``config.dataset`` and take the configured random subsets.

    Args:
        config: the ``data`` section.
        seed: seeds the subsets (same seed, same subset) and synthetic data.

    Returns:
        The (possibly subsetted) train/test split in memory.

    Raises:
        ValueError: a subset is larger than its split (names the config key).
        FileNotFoundError: data.root is missing (``DatasetMissingError``
            for fashion_mnist).
    """
    if _dataset_name(config) == "image_folder":
        _check_root(config)
        # Decodes only the chosen subsets: data.train_subset bounds the memory.
        data = load_image_folder(
            config.root, config.image_size, choose=_subset_chooser(config, seed)
        )
    else:
        full = _load_full(config, seed)
        train_pick, test_pick = _subset_chooser(config, seed)(
            len(full.train_images), len(full.test_images)
        )
        data = ImageData(
            train_images=full.train_images[train_pick],
            train_labels=full.train_labels[train_pick],
            test_images=full.test_images[test_pick],
            test_labels=full.test_labels[test_pick],
            num_classes=full.num_classes,
            mean=full.mean,
            std=full.std,
        )
    logger.info(
        "dataset %s: %d train, %d test samples, %d classes",
        _dataset_name(config),
        data.num_train,
        len(data.test_images),
        data.num_classes,
    )
    return data


def _subset_chooser(config: DataConfig, seed: int):
    """``(train_size, test_size) -> (train_rows, test_rows)``: seeded subsets."""

    def choose(train_size: int, test_size: int) -> tuple[torch.Tensor, ...]:
        n_train = _check_subset(
            "train_subset", config.train_subset, train_size, "train"
        )
        n_test = _check_subset("test_subset", config.test_subset, test_size, "test")
        gen = torch.Generator().manual_seed(seed)
        train_pick = torch.randperm(train_size, generator=gen)[:n_train]
        test_pick = torch.randperm(test_size, generator=gen)[:n_test]
        return train_pick, test_pick

    return choose


def dataset_size(config: DataConfig) -> int:
    """Number of training samples after ``train_subset``, without decoding.

    Also checks ``test_subset`` against the test split, so that both subsets
    are validated before any run starts.

    Raises:
        ValueError: a subset is larger than its split.
        FileNotFoundError: data.root is missing for a file-backed dataset.
    """
    name = _dataset_name(config)
    if name == "synthetic":
        size = config.synthetic_train_samples
        test_size = config.synthetic_test_samples
    elif name == "fashion_mnist":
        _check_root(config)
        check_fashion_mnist(config.root)
        size = FASHION_MNIST_SIZES["train"]
        test_size = FASHION_MNIST_SIZES["test"]
    else:
        _check_root(config)
        size = len(ImageFolder(str(train_dir(config.root))).samples)
        test_size = len(ImageFolder(str(eval_dir(config.root))).samples)
    _check_subset("test_subset", config.test_subset, test_size, "test")
    return _check_subset("train_subset", config.train_subset, size, "train")

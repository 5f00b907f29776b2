"""Images in memory, batched two-view augmentation and the loaders."""

from rekd_ray.data.augment import EvalTransform, TwoViewAugmentation
from rekd_ray.data.datasets import (
    EvalDataset,
    ImageData,
    PretrainDataset,
    dataset_size,
    eval_loader,
    load_dataset,
    pretrain_loader,
)
from rekd_ray.data.fashion_mnist import (
    DEBIAN_PACKAGE,
    DEFAULT_ROOT,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    DatasetMissingError,
    load_fashion_mnist,
)
from rekd_ray.data.image_folder import load_image_folder
from rekd_ray.data.synthetic import make_synthetic_images

__all__ = [
    "DEBIAN_PACKAGE",
    "DEFAULT_ROOT",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "DatasetMissingError",
    "EvalDataset",
    "EvalTransform",
    "ImageData",
    "PretrainDataset",
    "TwoViewAugmentation",
    "dataset_size",
    "eval_loader",
    "load_dataset",
    "load_fashion_mnist",
    "load_image_folder",
    "make_synthetic_images",
    "pretrain_loader",
]

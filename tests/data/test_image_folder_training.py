"""Users' own images (ImageNet layout): pretraining and linear evaluation.

A tiny generated folder of PNGs (2 classes x 8 train, x 4 val images at 40 px),
trained at a configured image size through the same one-process loop Ray
Train workers run, then evaluated with the final protocol.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from rekd_ray.config import DataConfig
from rekd_ray.data.augment import EvalTransform, TwoViewAugmentation
from rekd_ray.data.datasets import load_dataset
from rekd_ray.data.image_folder import load_image_folder
from rekd_ray.models.backbones import SMALL_IMAGE_MAX_SIZE, build_backbone
from rekd_ray.training.evaluate import final_evaluation
from rekd_ray.training.loop import train
from tests.conftest import tiny_config


def _write_pngs(root, per_class: dict[str, int], side: int = 40) -> None:
    """Class 0: bright squares on dark; class 1: dark squares on bright."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for label in (0, 1):
            folder = root / split / f"n0000000{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (side, side, 3), dtype=np.uint8)
                x, y = rng.integers(0, side // 2, 2)
                pixels[y : y + side // 2, x : x + side // 2] = 230
                if label:
                    pixels = 255 - pixels
                Image.fromarray(pixels).save(folder / f"img_{i}.png")


@pytest.fixture
def png_root(tmp_path):
    _write_pngs(tmp_path, {"train": 8, "val": 4})
    return tmp_path


def test_one_epoch_of_rekd_on_a_png_folder(png_root):
    # 96 px (> 64): the stock ImageNet stems, as at 224 px, at a tenth of the
    # cost. (The small-image stems are trained on synthetic data elsewhere.)
    image_size = 96
    config = tiny_config(
        data={
            "dataset": "image_folder",
            "root": str(png_root),
            "image_size": image_size,
        },
        moco={"queue_size": 8},
        relation={"num_prototypes": 2},
        optim={"epochs": 1, "batch_size": 8},
        eval={
            "monitor_train_samples": 16,
            "monitor_test_samples": 8,
            "linear_epochs": 10,
        },
    )
    data = load_dataset(config.data, seed=config.seed)
    assert data.train_images.shape == (16, 3, image_size, image_size)
    assert data.num_classes == 2 and len(data.test_labels) == 8

    result = train(config, data)

    (epoch,) = result.history
    assert math.isfinite(epoch["train/loss"])
    assert epoch["kd/prototype_version"] == 1.0  # the teacher store clustered
    metrics = final_evaluation(result.method.student_backbone(), data, config)
    assert 0.0 <= metrics["linear_top1"] <= 1.0
    assert 0.0 <= metrics["knn_top1"] <= 1.0


def test_imagenet_size_views_and_backbone():
    assert SMALL_IMAGE_MAX_SIZE < 224
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    view_1, view_2 = TwoViewAugmentation(224)(images)
    assert view_1.shape == view_2.shape == (2, 3, 224, 224)
    assert EvalTransform(224)(images).shape == (2, 3, 224, 224)
    backbone = build_backbone("mobilenet_v3_small", image_size=224).eval()
    # Stock stem: total stride 32, a 7x7 map at 224 px.
    assert backbone.trunk(view_1).shape[-2:] == (7, 7)
    with torch.no_grad():
        assert backbone(view_1).shape == (2, backbone.feature_dim)


def test_subsets_are_decoded_alone_and_match_the_full_set(png_root):
    config = DataConfig(
        dataset="image_folder",
        root=str(png_root),
        image_size=24,
        train_subset=5,
        test_subset=3,
    )
    data = load_dataset(config, seed=7)
    full = load_image_folder(png_root, 24)
    gen = torch.Generator().manual_seed(7)
    train_rows = torch.randperm(16, generator=gen)[:5]
    test_rows = torch.randperm(8, generator=gen)[:3]
    assert torch.equal(data.train_images, full.train_images[train_rows])
    assert torch.equal(data.train_labels, full.train_labels[train_rows])
    assert torch.equal(data.test_images, full.test_images[test_rows])

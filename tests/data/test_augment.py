"""Two-view augmentation and eval transform: shapes, randomness, statistics."""

import pytest
import torch

from rekd_ray.data.augment import EvalTransform, TwoViewAugmentation
from rekd_ray.data.synthetic import make_synthetic_images

IMAGES, _ = make_synthetic_images(16, 4, image_size=28, seed=0)  # (16, 28, 28)


@pytest.mark.parametrize(
    "images",
    [IMAGES, IMAGES.unsqueeze(1), IMAGES.unsqueeze(1).repeat(1, 3, 1, 1)],
    ids=["BHW", "B1HW", "B3HW"],
)
@pytest.mark.parametrize("image_size", [16, 32])
def test_two_views_shape_dtype(images, image_size):
    view_1, view_2 = TwoViewAugmentation(image_size)(images)
    for view in (view_1, view_2):
        assert view.shape == (16, 3, image_size, image_size)
        assert view.dtype == torch.float32 and torch.isfinite(view).all()
    assert not torch.allclose(view_1, view_2)
    # Grayscale is repeated to 3 identical channels.
    if images.dim() == 3 or images.shape[1] == 1:
        assert torch.equal(view_1[:, 0], view_1[:, 2])


def test_same_seed_reproduces_different_seed_differs():
    aug = TwoViewAugmentation()
    first = aug(IMAGES, torch.Generator().manual_seed(3))
    again = aug(IMAGES, torch.Generator().manual_seed(3))
    other = aug(IMAGES, torch.Generator().manual_seed(4))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.allclose(first[0], other[0])
    torch.manual_seed(5)
    global_1 = aug(IMAGES)
    torch.manual_seed(5)
    assert torch.equal(global_1[0], aug(IMAGES)[0])


def test_generator_leaves_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    TwoViewAugmentation()(IMAGES, torch.Generator().manual_seed(1))
    assert torch.equal(torch.rand(3), expected)


def test_per_sample_params_differ_within_batch():
    # 32 copies of one image: per-sample crops make (almost) all views distinct.
    same = IMAGES[:1].repeat(32, 1, 1)
    view_1, _ = TwoViewAugmentation(jitter_prob=0.0, flip_prob=0.0)(
        same, torch.Generator().manual_seed(0)
    )
    distinct = {tuple(v.flatten().tolist()) for v in view_1}
    assert len(distinct) >= 30


def test_constant_mean_image_normalizes_to_zero():
    mean, std = 0.5, 0.25
    images = torch.full((4, 28, 28), 128, dtype=torch.uint8)  # 128/255 ~ mean
    aug = TwoViewAugmentation(
        brightness=0.0, contrast=0.0, mean=(mean,) * 3, std=(std,) * 3
    )
    view_1, view_2 = aug(images)
    expected = (128 / 255 - mean) / std  # 0.0078
    assert torch.allclose(view_1, torch.full_like(view_1, expected), atol=1e-5)
    assert torch.allclose(view_2, torch.full_like(view_2, expected), atol=1e-5)


def test_jitter_changes_only_intensity():
    images = torch.full((64, 28, 28), 100, dtype=torch.uint8)
    aug = TwoViewAugmentation(mean=(0.0,) * 3, std=(1.0,) * 3, jitter_prob=1.0)
    view_1, _ = aug(images, torch.Generator().manual_seed(0))
    values = view_1[:, 0, 0, 0]
    # Brightness in [0.6, 1.4] of 100/255; a constant image has no contrast.
    assert values.min() >= 0.6 * 100 / 255 - 1e-4
    assert values.max() <= 1.4 * 100 / 255 + 1e-4
    assert values.std() > 0.02


def test_eval_transform_deterministic_and_normalized():
    transform = EvalTransform(32, mean=(0.5,) * 3, std=(0.5,) * 3)
    out = transform(IMAGES)
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, transform(IMAGES))
    same = EvalTransform(28, mean=(0.5,) * 3, std=(0.5,) * 3)(IMAGES)
    assert torch.allclose(same[:, 1], IMAGES.float() / 255 * 2 - 1, atol=1e-6)


def test_bad_input_raises():
    with pytest.raises(TypeError, match="uint8"):
        TwoViewAugmentation()(IMAGES.float())
    with pytest.raises(ValueError, match="C in"):
        TwoViewAugmentation()(IMAGES.view(16, 1, 1, 28, 28))
    with pytest.raises(ValueError, match="std > 0"):
        EvalTransform(std=(0.0, 1.0, 1.0))

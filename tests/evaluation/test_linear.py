"""Linear probe: separable blobs, random labels, determinism."""

from __future__ import annotations

import pytest
import torch

from rekd_ray.evaluation.linear import linear_probe_accuracy


def _blobs(num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    labels = torch.randint(0, 3, (num_samples,), generator=generator)
    noise = torch.randn(num_samples, 3, generator=generator)
    # Extra noise dimensions and a large offset exercise standardization.
    features = torch.cat([centers[labels] + noise, torch.randn(num_samples, 5)], 1)
    return features * 10 + 100, labels


def test_separable_blobs_are_learned() -> None:
    train_x, train_y = _blobs(300, seed=0)
    test_x, test_y = _blobs(150, seed=1)

    accuracy = linear_probe_accuracy(
        train_x, train_y, test_x, test_y, epochs=30, lr=1e-2, batch_size=64
    )

    assert accuracy > 0.95


def test_random_labels_stay_near_chance() -> None:
    generator = torch.Generator().manual_seed(0)
    train_x = torch.randn(300, 8, generator=generator)
    train_y = torch.randint(0, 4, (300,), generator=generator)
    test_x = torch.randn(400, 8, generator=generator)
    test_y = torch.randint(0, 4, (400,), generator=generator)

    accuracy = linear_probe_accuracy(
        train_x, train_y, test_x, test_y, epochs=30, batch_size=64
    )

    assert 0.15 < accuracy < 0.35


def test_equal_seeds_give_equal_results() -> None:
    train_x, train_y = _blobs(200, seed=2)
    test_x = torch.randn(100, 8)
    test_y = torch.randint(0, 3, (100,))
    args = (train_x, train_y, test_x, test_y)

    first = linear_probe_accuracy(*args, epochs=5, batch_size=32, seed=4)
    second = linear_probe_accuracy(*args, epochs=5, batch_size=32, seed=4)

    assert first == second


def test_bad_arguments_raise() -> None:
    features, labels = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)

    with pytest.raises(ValueError, match=r"epochs must be > 0; got 0"):
        linear_probe_accuracy(features, labels, features, labels, epochs=0)
    with pytest.raises(ValueError, match=r"train_labels must have shape \(4,\)"):
        linear_probe_accuracy(features, labels[:3], features, labels)


def test_tiny_feature_scale_is_standardized_like_any_other() -> None:
    # A random-init network in eval mode emits features of ~1e-9: the probe
    # must standardize them, not treat them as constant.
    train_x, train_y = _blobs(300, seed=0)
    test_x, test_y = _blobs(150, seed=1)
    kwargs = {"epochs": 30, "lr": 1e-2, "batch_size": 64}

    unit = linear_probe_accuracy(train_x, train_y, test_x, test_y, **kwargs)
    tiny = linear_probe_accuracy(
        train_x * 1e-11, train_y, test_x * 1e-11, test_y, **kwargs
    )

    assert unit > 0.95
    assert tiny == pytest.approx(unit, abs=0.01)


def test_constant_feature_is_ignored() -> None:
    train_x, train_y = _blobs(300, seed=0)
    test_x, test_y = _blobs(150, seed=1)
    constant_train = torch.cat([train_x, torch.full((300, 1), 7.0)], dim=1)
    constant_test = torch.cat([test_x, torch.full((150, 1), -3.0)], dim=1)

    accuracy = linear_probe_accuracy(
        constant_train, train_y, constant_test, test_y, epochs=30, batch_size=64
    )

    assert accuracy > 0.95

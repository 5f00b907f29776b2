"""Weighted kNN: hand case, naive loop reference, chunking, clamping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rekd_ray.evaluation.knn import weighted_knn_accuracy

# Train: a=(1,0) class 0, b=(0,1) class 1, c=(1,1) class 1. Test: (1,0) class
# 0 and (0,1) class 1. With temperature 1 for the test (1,0): sims a=1, c=0.707,
# b=0. k=1 and k=2 vote class 0 (e^1=2.718 > e^0.707=2.028); k=3 gives class 1
# 2.028 + e^0 = 3.028 > 2.718: wrong. The test (0,1) is right for every k.
TRAIN_FEATURES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
TRAIN_LABELS = torch.tensor([0, 1, 1])
TEST_FEATURES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TEST_LABELS = torch.tensor([0, 1])


def test_hand_computed_two_class_case() -> None:
    accuracies = weighted_knn_accuracy(
        TRAIN_FEATURES,
        TRAIN_LABELS,
        TEST_FEATURES,
        TEST_LABELS,
        ks=(1, 2, 3),
        temperature=1.0,
    )

    assert accuracies == {1: 1.0, 2: 1.0, 3: 0.5}


def test_k_larger_than_train_set_is_clamped() -> None:
    accuracies = weighted_knn_accuracy(
        TRAIN_FEATURES,
        TRAIN_LABELS,
        TEST_FEATURES,
        TEST_LABELS,
        ks=(3, 50),
        temperature=1.0,
    )

    assert accuracies == {3: 0.5, 50: 0.5}


def _naive_knn(train, train_labels, test, test_labels, k, temperature, classes):
    train = F.normalize(train, dim=1).tolist()
    test = F.normalize(test, dim=1).tolist()
    correct = 0
    for x, y in zip(test, test_labels.tolist(), strict=True):
        sims = [sum(a * b for a, b in zip(x, t, strict=True)) for t in train]
        nearest = sorted(range(len(train)), key=lambda i: -sims[i])[:k]
        scores = [0.0] * classes
        for i in nearest:
            scores[int(train_labels[i])] += math.exp(sims[i] / temperature)
        correct += int(max(range(classes), key=lambda c: scores[c]) == y)
    return correct / len(test)


def test_matches_naive_loop_on_random_data() -> None:
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(40, 5, generator=generator)
    train_labels = torch.randint(0, 3, (40,), generator=generator)
    test = torch.randn(15, 5, generator=generator)
    test_labels = torch.randint(0, 3, (15,), generator=generator)

    accuracies = weighted_knn_accuracy(
        train, train_labels, test, test_labels, ks=(1, 5, 20), temperature=0.5
    )

    for k in (1, 5, 20):
        expected = _naive_knn(train, train_labels, test, test_labels, k, 0.5, 3)
        assert accuracies[k] == pytest.approx(expected)


@pytest.mark.parametrize("chunk_size", [1, 3, 7])
def test_chunked_equals_unchunked(chunk_size: int) -> None:
    generator = torch.Generator().manual_seed(1)
    train = torch.randn(30, 4, generator=generator)
    train_labels = torch.randint(0, 4, (30,), generator=generator)
    test = torch.randn(17, 4, generator=generator)
    test_labels = torch.randint(0, 4, (17,), generator=generator)
    args = (train, train_labels, test, test_labels)

    chunked = weighted_knn_accuracy(*args, ks=(1, 10), chunk_size=chunk_size)
    whole = weighted_knn_accuracy(*args, ks=(1, 10), chunk_size=1024)

    assert chunked == whole


def test_bad_arguments_raise() -> None:
    args = (TRAIN_FEATURES, TRAIN_LABELS, TEST_FEATURES, TEST_LABELS)

    with pytest.raises(ValueError, match=r"ks must be non-empty positive"):
        weighted_knn_accuracy(*args, ks=(0,))
    with pytest.raises(ValueError, match=r"temperature must be > 0; got 0.0"):
        weighted_knn_accuracy(*args, temperature=0.0)
    with pytest.raises(ValueError, match=r"same F; got 2 and 3"):
        weighted_knn_accuracy(
            TRAIN_FEATURES, TRAIN_LABELS, torch.zeros(2, 3), TEST_LABELS
        )

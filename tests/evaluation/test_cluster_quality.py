"""Cluster quality: NMI and purity on hand cases, unassigned samples."""

from __future__ import annotations

import pytest
import torch

from rekd_ray.evaluation.cluster_quality import cluster_quality


def test_perfect_clustering() -> None:
    scores = cluster_quality([0, 0, 1, 1], [0, 0, 1, 1])

    assert scores == pytest.approx({"nmi": 1.0, "purity": 1.0})


def test_renamed_clusters_are_still_perfect() -> None:
    scores = cluster_quality(torch.tensor([5, 5, 2, 2]), torch.tensor([0, 0, 1, 1]))

    assert scores == pytest.approx({"nmi": 1.0, "purity": 1.0})


def test_single_cluster_over_two_classes() -> None:
    scores = cluster_quality([0, 0, 0, 0], [0, 1, 0, 1])

    assert scores == pytest.approx({"nmi": 0.0, "purity": 0.5})


def test_purity_hand_case() -> None:
    # Cluster 0 holds classes 0, 0, 1 (max 2); cluster 1 holds 1, 2 (max 1).
    scores = cluster_quality([0, 0, 0, 1, 1], [0, 0, 1, 1, 2])

    assert scores["purity"] == pytest.approx(3 / 5)
    assert 0.0 < scores["nmi"] < 1.0


def test_unassigned_samples_are_ignored() -> None:
    scores = cluster_quality([-1, 0, 0, 1, 1, -1], [2, 0, 0, 1, 1, 0])

    assert scores == pytest.approx({"nmi": 1.0, "purity": 1.0})


def test_nothing_assigned_gives_zeros() -> None:
    assert cluster_quality([-1, -1], [0, 1]) == {"nmi": 0.0, "purity": 0.0}


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same length; got 3 and 2"):
        cluster_quality([0, 1, 1], [0, 1])

"""The in-process relation source: store, clustering, look-up."""

import numpy as np
import torch

from rekd_ray.training.relations import LocalRelationSource, lookup_assignments


def test_lookup_without_clustering_is_unknown():
    labels = lookup_assignments(None, torch.tensor([0, 3, -1]))
    assert labels.tolist() == [-1, -1, -1]


def test_lookup_maps_indices_and_keeps_empty_slots_unknown():
    assignments = np.array([2, 0, 1, -1])
    labels = lookup_assignments(assignments, torch.tensor([0, 2, -1, 3]))
    assert labels.tolist() == [2, 1, -1, -1]


def test_clusters_only_filled_rows():
    source = LocalRelationSource(8, 2, num_prototypes=2, iterations=5)
    # Two directions, three samples each; rows 6 and 7 never written.
    embeddings = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    source.push(torch.arange(6), embeddings)
    assert source.version == 0
    source.request_clustering()
    assert source.version == 1
    labels = source.lookup(torch.arange(8)).tolist()
    assert labels[6:] == [-1, -1]
    assert len(set(labels[:3])) == 1 and len(set(labels[3:6])) == 1
    assert labels[0] != labels[3]
    stats = source.stats()
    assert stats["prototype_version"] == 1.0
    assert stats["empty_clusters"] == 0.0


def test_zero_rows_stay_unknown_instead_of_failing():
    source = LocalRelationSource(8, 2, num_prototypes=2, iterations=5)
    embeddings = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3 + [[0.0, 0.0]] * 2)
    source.push(torch.arange(8), embeddings)
    source.request_clustering()
    labels = source.lookup(torch.arange(8)).tolist()
    assert labels[6:] == [-1, -1]
    assert labels[0] != labels[3] and min(labels[:6]) >= 0
    assert source.stats()["zero_feature_samples"] == 2.0


def test_too_few_filled_rows_skips_clustering():
    source = LocalRelationSource(10, 2, num_prototypes=4)
    source.push(torch.tensor([0, 1]), torch.eye(2))
    source.request_clustering()
    assert source.version == 0
    assert source.assignments() is None

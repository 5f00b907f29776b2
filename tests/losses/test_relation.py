"""Tests of the ReKD relation-wise contrastive loss and its positives mask."""

import math

import pytest
import torch
import torch.nn.functional as F

from rekd_ray.losses import (
    RelationContrastiveLoss,
    info_nce_loss,
    positives_per_anchor,
    relation_contrastive_loss,
    relation_mask,
)


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def labels(size: int, num_prototypes: int, seed: int) -> torch.Tensor:
    """Prototype ids in [-1, num_prototypes): -1 (unknown) included."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-1, num_prototypes, (size,), generator=generator)


def naive_relation(query, key, queue, query_labels, queue_labels, temperature):
    """(1/N) sum_i -(1/|P_i|) sum_{p in P_i} log(exp(l_ip) / sum_c exp(l_ic))."""
    candidates = [row.tolist() for row in key] + [row.tolist() for row in queue]
    candidate_labels = query_labels.tolist() + queue_labels.tolist()
    total = 0.0
    for i, q in enumerate(query.tolist()):
        label = candidate_labels[i]
        logits = [
            sum(a * b for a, b in zip(q, c, strict=True)) / temperature
            for c in candidates
        ]
        log_denominator = math.log(sum(math.exp(x) for x in logits))
        positives = [
            p
            for p, other in enumerate(candidate_labels)
            if p == i or (label >= 0 and other == label)
        ]
        total += -sum(logits[p] - log_denominator for p in positives) / len(positives)
    return total / len(query)


@pytest.mark.parametrize("n", [1, 2, 8])
@pytest.mark.parametrize("d", [1, 16])
@pytest.mark.parametrize("k", [0, 6])
def test_matches_naive_loop(n, d, k):
    query, key, queue = unit(n, d, seed=1), unit(n, d, seed=2), unit(k, d, seed=3)
    query_labels, queue_labels = labels(n, 3, seed=4), labels(k, 3, seed=5)
    loss = relation_contrastive_loss(
        query.double(), key.double(), queue.double(), query_labels, queue_labels, 0.2
    )
    expected = naive_relation(query, key, queue, query_labels, queue_labels, 0.2)
    assert loss.item() == pytest.approx(expected)


def test_hand_computed_case():
    # q_1 = k_1 = (1, 0), q_2 = k_2 = (0, 1), queue = [(-1, 0)], t = 1.
    # Labels [0, 0], queue label 1: positives of both anchors are k_1 and k_2.
    # Anchor 1 logits [1, 0, -1]: log(e + 1 + 1/e) - (1 + 0)/2 = 0.9076059644443804
    # Anchor 2 logits [0, 1, 0]:  log(2 + e) - (0 + 1)/2 = 1.0514447139320509
    # Mean: 0.9795253391882157.
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queue = torch.tensor([[-1.0, 0.0]])
    loss = relation_contrastive_loss(
        query, query, queue, torch.tensor([0, 0]), torch.tensor([1]), temperature=1.0
    )
    assert loss.item() == pytest.approx(0.9795253391882157, rel=1e-6)


def test_mask_and_positive_counts():
    query_labels = torch.tensor([0, 1, 0, -1])
    queue_labels = torch.tensor([0, -1, 1])
    expected = torch.tensor(
        [
            [1, 0, 1, 0, 1, 0, 0],
            [0, 1, 0, 0, 0, 0, 1],
            [1, 0, 1, 0, 1, 0, 0],
            [0, 0, 0, 1, 0, 0, 0],  # unknown: own key only, not the -1 entries
        ],
        dtype=torch.bool,
    )
    assert torch.equal(relation_mask(query_labels, queue_labels), expected)
    counts = positives_per_anchor(query_labels, queue_labels)
    assert counts.dtype == torch.float32
    assert counts.tolist() == [3.0, 2.0, 3.0, 1.0]


def test_batch_permutation_invariance():
    query, key, queue = unit(8, 16, seed=1), unit(8, 16, seed=2), unit(6, 16, seed=3)
    query_labels, queue_labels = labels(8, 3, seed=4), labels(6, 3, seed=5)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    loss = relation_contrastive_loss(query, key, queue, query_labels, queue_labels, 0.1)
    permuted = relation_contrastive_loss(
        query[perm], key[perm], queue, query_labels[perm], queue_labels, 0.1
    )
    torch.testing.assert_close(loss, permuted)


@pytest.mark.parametrize("n", [1, 2, 8])
def test_all_unknown_labels_equal_info_nce(n):
    query, key, queue = unit(n, 16, seed=1), unit(n, 16, seed=2), unit(6, 16, seed=3)
    unknown, queue_unknown = torch.full((n,), -1), torch.full((6,), -1)
    loss = relation_contrastive_loss(query, key, queue, unknown, queue_unknown, 0.2)
    expected = info_nce_loss(query, key, queue, 0.2)
    assert abs(loss.item() - expected.item()) < 1e-6


def test_anchor_with_unique_prototype_reduces_to_its_info_nce_term():
    query, key, queue = unit(6, 16, seed=1), unit(6, 16, seed=2), unit(5, 16, seed=3)
    # Anchor 0 has prototype 7, which no other batch key or queue entry has.
    query_labels = torch.tensor([7, 1, 1, 2, 2, 1])
    queue_labels = torch.tensor([1, 2, -1, 1, 2])
    query = query.requires_grad_()
    terms = relation_contrastive_loss(
        query, key, queue, query_labels, queue_labels, 0.2, reduction="none"
    )
    info_nce_terms = info_nce_loss(query, key, queue, 0.2, reduction="none")
    assert abs(terms[0].item() - info_nce_terms[0].item()) < 1e-6
    terms.mean().backward()
    assert torch.isfinite(terms).all() and torch.isfinite(query.grad).all()


@pytest.mark.parametrize("temperature", [0.2, 1e-4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_key_related_stays_finite(temperature, dtype):
    # M = 1: every batch key and queue entry is a positive of every anchor.
    query = unit(8, 16, seed=1).to(dtype).requires_grad_()
    key, queue = unit(8, 16, seed=2).to(dtype), unit(6, 16, seed=3).to(dtype)
    loss = relation_contrastive_loss(
        query,
        key,
        queue,
        torch.zeros(8, dtype=torch.long),
        torch.zeros(6).long(),
        temperature,
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(query.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"query_labels": torch.zeros(3).long()},
            ValueError,
            r"query_labels .*\(N=2,\).*\(3,\)",
        ),
        (
            {"queue_labels": torch.zeros(4).long()},
            ValueError,
            r"queue_labels .*\(K=5,\).*\(4,\)",
        ),
        (
            {"queue_labels": torch.zeros(5, 1).long()},
            ValueError,
            r"queue_labels .*\(5, 1\)",
        ),
        (
            {"query_labels": torch.zeros(2)},
            TypeError,
            r"query_labels must hold integer.*float32",
        ),
        ({"queue": torch.ones(5, 3)}, ValueError, r"queue must have shape \(K, 2\)"),
        ({"temperature": -0.1}, ValueError, r"temperature must be .*got -0.1"),
    ],
)
def test_bad_input_raises(kwargs, error, match):
    args = {
        "query": unit(2, 2),
        "key": unit(2, 2),
        "queue": unit(5, 2),
        "query_labels": torch.tensor([0, 1]),
        "queue_labels": torch.tensor([0, 1, -1, 0, 1]),
        "temperature": 0.2,
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        relation_contrastive_loss(**args)


def test_module_wrapper():
    query, key, queue = unit(3, 4, seed=1), unit(3, 4, seed=2), unit(2, 4, seed=3)
    query_labels, queue_labels = torch.tensor([0, 0, 1]), torch.tensor([1, 0])
    module = RelationContrastiveLoss(temperature=0.3)
    torch.testing.assert_close(
        module(query, key, queue, query_labels, queue_labels),
        relation_contrastive_loss(query, key, queue, query_labels, queue_labels, 0.3),
    )


def test_sgd_steps_lower_the_loss():
    torch.manual_seed(0)
    query = torch.randn(8, 16, requires_grad=True)
    key = torch.randn(8, 16, requires_grad=True)
    queue = unit(32, 16, seed=3)
    query_labels, queue_labels = labels(8, 3, seed=4), labels(32, 3, seed=5)
    optimizer = torch.optim.SGD([query, key], lr=0.5)

    def loss_fn():
        return relation_contrastive_loss(
            F.normalize(query, dim=1),
            F.normalize(key, dim=1),
            queue,
            query_labels,
            queue_labels,
            0.2,
        )

    first = loss_fn().item()
    for _ in range(10):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
    assert loss_fn().item() < first

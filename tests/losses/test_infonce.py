"""Tests of the MoCo-v2 InfoNCE loss with in-batch negatives."""

import math

import pytest
import torch
import torch.nn.functional as F

from rekd_ray.losses import InfoNCELoss, contrastive_logits, info_nce_loss


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def naive_info_nce(query, key, queue, temperature):
    """-(1/N) sum_i log(exp(q_i.k_i/t) / sum_c exp(q_i.c/t)), c in keys + queue."""
    candidates = [row.tolist() for row in key] + [row.tolist() for row in queue]
    total = 0.0
    for i, q in enumerate(query.tolist()):
        sims = [sum(a * b for a, b in zip(q, c, strict=True)) for c in candidates]
        denominator = sum(math.exp(s / temperature) for s in sims)
        total += -math.log(math.exp(sims[i] / temperature) / denominator)
    return total / len(query)


@pytest.mark.parametrize("n", [1, 2, 8])
@pytest.mark.parametrize("d", [1, 16])
@pytest.mark.parametrize("k", [0, 5])
def test_matches_naive_loop(n, d, k):
    query, key, queue = unit(n, d, seed=1), unit(n, d, seed=2), unit(k, d, seed=3)
    loss = info_nce_loss(query.double(), key.double(), queue.double(), 0.2)
    assert loss.item() == pytest.approx(naive_info_nce(query, key, queue, 0.2))


def test_hand_computed_case():
    # q = (1, 0); k at 60 degrees -> q.k = 1/2; queue entry (-1, 0) -> -1.
    # t = 1/2: logits = [1, -2], loss = log(1 + e^-3) = 0.04858735157374206.
    query = torch.tensor([[1.0, 0.0]])
    key = torch.tensor([[0.5, math.sqrt(3) / 2]])
    queue = torch.tensor([[-1.0, 0.0]])
    loss = info_nce_loss(query, key, queue, temperature=0.5)
    assert loss.item() == pytest.approx(0.04858735157374206, rel=1e-6)


def test_logits_layout_puts_positive_on_the_diagonal():
    query, queue = unit(3, 4, seed=1), unit(2, 4, seed=2)
    logits = contrastive_logits(query, query, queue, temperature=0.5)
    assert logits.shape == (3, 5)
    torch.testing.assert_close(logits.diagonal(), torch.full((3,), 2.0))


def test_batch_permutation_invariance():
    query, key, queue = unit(8, 16, seed=1), unit(8, 16, seed=2), unit(5, 16, seed=3)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    loss = info_nce_loss(query, key, queue, 0.1)
    permuted = info_nce_loss(query[perm], key[perm], queue, 0.1)
    torch.testing.assert_close(loss, permuted)


def test_reduction_none_gives_per_anchor_terms():
    query, key, queue = unit(4, 8, seed=1), unit(4, 8, seed=2), unit(3, 8, seed=3)
    terms = info_nce_loss(query, key, queue, 0.2, reduction="none")
    assert terms.shape == (4,)
    torch.testing.assert_close(terms.mean(), info_nce_loss(query, key, queue, 0.2))


def test_large_logits_stay_finite():
    query = unit(4, 8, seed=1).requires_grad_()
    loss = info_nce_loss(query, unit(4, 8, seed=2), unit(6, 8, seed=3), 1e-4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(query.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query": torch.ones(4)}, r"query must have shape \(N, D\).*\(4,\)"),
        ({"query": torch.ones(0, 2)}, r"query .*N > 0.*\(0, 2\)"),
        ({"key": torch.ones(3, 2)}, r"key must have the shape of query \(2, 2\)"),
        ({"queue": torch.ones(5, 3)}, r"queue must have shape \(K, 2\).*\(5, 3\)"),
        ({"temperature": 0.0}, r"temperature must be .*> 0.*got 0.0"),
        ({"temperature": float("nan")}, r"temperature must be .*got nan"),
        ({"reduction": "sum"}, r"reduction must be 'mean' or 'none', got 'sum'"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = {
        "query": unit(2, 2),
        "key": unit(2, 2),
        "queue": unit(5, 2),
        "temperature": 0.2,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        info_nce_loss(**args)


def test_module_wrapper_and_bad_temperature():
    query, key, queue = unit(2, 4, seed=1), unit(2, 4, seed=2), unit(3, 4, seed=3)
    module = InfoNCELoss(temperature=0.3)
    torch.testing.assert_close(
        module(query, key, queue), info_nce_loss(query, key, queue, 0.3)
    )
    with pytest.raises(ValueError, match="temperature must be"):
        InfoNCELoss(temperature=-1.0)


def test_sgd_steps_lower_the_loss():
    torch.manual_seed(0)
    query = torch.randn(8, 16, requires_grad=True)
    key = torch.randn(8, 16, requires_grad=True)
    queue = unit(32, 16, seed=3)
    optimizer = torch.optim.SGD([query, key], lr=0.5)

    def loss_fn():
        return info_nce_loss(
            F.normalize(query, dim=1), F.normalize(key, dim=1), queue, 0.2
        )

    first = loss_fn().item()
    for _ in range(10):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
    assert loss_fn().item() < first

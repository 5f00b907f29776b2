"""MoCo: key encoder freezing, momentum update, Shuffle-BN, key queue."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rekd_ray.models.moco import KeyQueue, MoCo, shuffled_forward


def _tiny_moco(**kwargs) -> MoCo:
    torch.manual_seed(0)
    options = {"projection_dim": 8, "hidden_dim": 16, "queue_size": 8}
    return MoCo("mobilenet_v3_small", **(options | kwargs))


@pytest.fixture(scope="module")
def moco() -> MoCo:
    return _tiny_moco()


def _images(batch_size: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, 32, 32, generator=generator)


def test_key_encoder_is_frozen_and_not_trainable(moco: MoCo) -> None:
    trainable = {id(p) for p in moco.trainable_parameters()}
    key_params = list(moco.key_encoder.parameters())

    assert all(not p.requires_grad for p in key_params)
    assert trainable.isdisjoint(id(p) for p in key_params)
    assert trainable == {id(p) for p in moco.query_encoder.parameters()}


def test_key_encoder_follows_module_mode(moco: MoCo) -> None:
    moco.eval()
    assert not moco.key_encoder.training
    moco.train()
    assert moco.key_encoder.training


def test_momentum_update_formula() -> None:
    moco = _tiny_moco(momentum=0.9)
    with torch.no_grad():
        for p in moco.query_encoder.parameters():
            p.fill_(1.0)
        for p in moco.key_encoder.parameters():
            p.fill_(3.0)

    moco.momentum_update()

    # 0.9 * 3 + 0.1 * 1 = 2.8 for every parameter; queries are untouched.
    for p in moco.key_encoder.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 2.8))
    for p in moco.query_encoder.parameters():
        torch.testing.assert_close(p, torch.ones_like(p))


def test_keys_and_queries_are_unit_rows(moco: MoCo) -> None:
    moco.train()
    images = _images()

    queries = moco.encode_query(images)
    keys = moco.encode_key(images)

    assert queries.shape == keys.shape == (4, 8)
    torch.testing.assert_close(queries.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(4))
    assert queries.requires_grad and not keys.requires_grad


def test_shuffle_bn_is_exact_in_eval_mode(moco: MoCo) -> None:
    moco.eval()
    images = _images()

    shuffled = moco.encode_key(images, shuffle_bn=True)
    plain = moco.encode_key(images, shuffle_bn=False)

    torch.testing.assert_close(shuffled, plain, atol=1e-6, rtol=0)


def test_shuffle_bn_inverts_the_permutation_in_train_mode(moco: MoCo) -> None:
    moco.train()
    images = _images(batch_size=6)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    inverse = torch.argsort(perm)

    keys = moco.encode_key(images, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = F.normalize(moco.key_encoder(images[perm])[inverse], dim=1)

    assert not torch.equal(perm, torch.arange(6))
    torch.testing.assert_close(keys, expected)


def test_local_shuffle_leaves_full_batch_statistics_unchanged(moco: MoCo) -> None:
    # Documents the NOTE in encode_key: one BN over the whole batch is
    # permutation invariant, so a local shuffle only reorders float sums.
    moco.train()
    images = _images(batch_size=6)

    shuffled = moco.encode_key(images, generator=torch.Generator().manual_seed(1))
    plain = moco.encode_key(images, shuffle_bn=False)

    torch.testing.assert_close(shuffled, plain, atol=1e-5, rtol=1e-4)


def test_shuffled_forward_restores_order() -> None:
    rows = torch.arange(10.0).unsqueeze(1)  # (10, 1)

    out = shuffled_forward(lambda x: x * 2, rows, torch.Generator().manual_seed(0))

    torch.testing.assert_close(out, rows * 2)


def test_queue_starts_with_unit_rows_and_empty_slots() -> None:
    queue = KeyQueue(size=8, dim=4)

    torch.testing.assert_close(queue.keys.norm(dim=1), torch.ones(8))
    assert queue.indices.tolist() == [-1] * 8
    assert int(queue.pointer) == 0
    assert queue.num_filled == 0


def test_queue_wraps_around_when_size_is_not_a_multiple() -> None:
    queue = KeyQueue(size=8, dim=2)
    expected_indices = [-1] * 8
    pointer = 0

    for step in range(5):
        indices = torch.arange(3) + 10 * step
        keys = torch.full((3, 2), float(step))
        queue.enqueue(keys, indices)
        for offset, index in enumerate(indices.tolist()):
            expected_indices[(pointer + offset) % 8] = index
        pointer = (pointer + 3) % 8

        assert 0 <= int(queue.pointer) < 8
        assert int(queue.pointer) == pointer
        assert queue.indices.tolist() == expected_indices

    # Slots by step: 0-2, 3-5, 6-7 + 0 (wrap), 1-3, 4-6; pointer 15 % 8.
    assert queue.indices.tolist() == [22, 30, 31, 32, 40, 41, 42, 21]
    assert int(queue.pointer) == 7
    assert queue.keys[:, 0].tolist() == [2.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0, 2.0]
    assert queue.num_filled == 8


def test_one_epoch_of_ragged_batches_keeps_pointer_in_range() -> None:
    queue = KeyQueue(size=8, dim=2)
    indices = torch.arange(10)

    for batch in indices.split(4):  # batches of 4, 4, 2
        queue.enqueue(F.normalize(torch.randn(len(batch), 2), dim=1), batch)
        assert 0 <= int(queue.pointer) < 8

    assert int(queue.pointer) == 2
    assert queue.indices.tolist() == [8, 9, 2, 3, 4, 5, 6, 7]


def test_queue_rejects_batch_larger_than_queue() -> None:
    queue = KeyQueue(size=4, dim=2)

    with pytest.raises(ValueError, match=r"B=5 exceeds queue size K=4"):
        queue.enqueue(torch.zeros(5, 2), torch.arange(5))
    with pytest.raises(ValueError, match=r"keys must have shape \(B, 2\)"):
        queue.enqueue(torch.zeros(2, 3), torch.arange(2))


def test_state_dict_round_trip_restores_queue_and_pointer() -> None:
    source = _tiny_moco()
    source.queue.enqueue(F.normalize(torch.randn(3, 8), dim=1), torch.arange(3) + 5)
    target = _tiny_moco()

    target.load_state_dict(source.state_dict())

    assert torch.equal(target.queue.keys, source.queue.keys)
    assert torch.equal(target.queue.indices, source.queue.indices)
    assert int(target.queue.pointer) == 3
    assert target.queue.num_filled == 3


def test_bad_momentum_names_the_range() -> None:
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]; got 1.5"):
        MoCo("alexnet", momentum=1.5)


def test_split_shuffle_forwards_sub_batches() -> None:
    # A module whose output depends on its batch: x - mean(batch).
    def centre(x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=0, keepdim=True)

    rows = torch.arange(8, dtype=torch.float32).pow(3).unsqueeze(1)  # (8, 1)
    generator = torch.Generator().manual_seed(0)
    out = shuffled_forward(centre, rows, generator, num_splits=2)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    chunks = rows[perm].chunk(2)
    expected = torch.cat([centre(chunk) for chunk in chunks])[torch.argsort(perm)]
    torch.testing.assert_close(out, expected)
    # Unlike a single batch, the sub-batch statistics change the keys.
    assert not torch.allclose(out, centre(rows))

"""The one-process training function on tiny synthetic data."""

import pytest
import torch

from rekd_ray.data.datasets import load_dataset
from rekd_ray.training import methods as methods_module
from rekd_ray.training.checkpoint import load_checkpoint, save_checkpoint
from rekd_ray.training.loop import NonFiniteLossError, TrainHooks, train
from tests.conftest import tiny_config


def test_ten_images_batch_four_queue_eight_one_epoch():
    config = tiny_config(
        method="mocov2",
        data={"synthetic_train_samples": 10, "synthetic_test_samples": 8},
        moco={"queue_size": 8},
        optim={"epochs": 1, "batch_size": 4},
        eval={"monitor_train_samples": 10, "monitor_test_samples": 8},
    )
    data = load_dataset(config.data, seed=0)
    result = train(config, data)
    queue = result.method.student.queue
    assert len(result.history) == 1
    assert 0 <= int(queue.pointer) < 8
    # Two steps of 4 keys (drop_last) filled the whole queue with real indices.
    assert ((queue.indices >= 0) & (queue.indices < 10)).all()
    assert 0.0 <= result.history[0]["val/knn_top1"] <= 1.0


def test_rekd_clusters_a_fresh_teacher_pass_before_each_epoch():
    config = tiny_config()
    data = load_dataset(config.data, seed=0)
    result = train(config, data)
    first, second = result.history
    # store_updates=epoch: the first clustering comes before the first step.
    assert first["kd/prototype_version"] == 1.0
    assert second["kd/prototype_version"] == 2.0
    assert first["train/related_fraction"] == 1.0
    assert first["train/positives_per_anchor"] > 1.0
    assert first["kd/clustered_samples"] == config.data.synthetic_train_samples
    assert first["time/teacher_pass_seconds"] > 0.0
    assert 0.0 <= second["kd/prototype_nmi"] <= 1.0
    for key in ("train/loss_teacher", "train/loss_relation", "time/cluster_seconds"):
        assert key in second


def test_rekd_with_step_pushes_uses_prototypes_after_the_first_epoch():
    config = tiny_config(relation={"store_updates": "step"})
    data = load_dataset(config.data, seed=0)
    result = train(config, data)
    first, second = result.history
    assert first["kd/prototype_version"] == 1.0
    assert second["kd/prototype_version"] == 2.0
    # Epoch 0 has no prototypes yet: relation loss reduces to InfoNCE.
    assert first["train/related_fraction"] == 0.0
    assert second["train/related_fraction"] == 1.0
    assert second["train/positives_per_anchor"] > 1.0
    assert "time/teacher_pass_seconds" not in first


def test_store_pass_covers_every_sample_once_across_workers():
    config = tiny_config()
    data = load_dataset(config.data, seed=0)
    method = train(config, data).method
    seen = []

    class Recorder:
        version = 1

        def push(self, indices, embeddings):
            assert embeddings.shape == (len(indices), config.teacher_store_dim)
            seen.append(indices.clone())

    method.relation_source = Recorder()
    for rank in range(3):
        method.fill_store(rank, world_size=3, batch_size=7)
    indices = torch.cat(seen).sort().values
    assert torch.equal(indices, torch.arange(data.num_train))


def test_response_needs_no_prototypes():
    config = tiny_config(method="response", optim={"epochs": 2})
    result = train(config, load_dataset(config.data, seed=0))
    assert all(
        "kd/prototype_version" not in row or row["kd/prototype_version"] == 0
        for row in result.history
    )
    assert "time/teacher_pass_seconds" not in result.history[0]


@pytest.mark.parametrize("method", ["response", "supervised"])
def test_other_methods_run(method):
    config = tiny_config(method=method, optim={"epochs": 1})
    result = train(config, load_dataset(config.data, seed=0))
    assert torch.isfinite(torch.tensor(result.history[0]["train/loss"]))


def test_nan_loss_stops_with_step_and_value(monkeypatch):
    def nan_loss(*args, **kwargs):
        return torch.tensor(float("nan"), requires_grad=True)

    monkeypatch.setattr(methods_module, "info_nce_loss", nan_loss)
    config = tiny_config(method="mocov2", optim={"epochs": 1})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at step 0"):
        train(config, load_dataset(config.data, seed=0))


def test_checkpoint_resume_continues_at_next_epoch(tmp_path):
    config = tiny_config(method="mocov2", optim={"epochs": 2})
    data = load_dataset(config.data, seed=0)

    def stop_after_first(metrics, build_state):
        save_checkpoint(build_state(), tmp_path)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, data, hooks=TrainHooks(on_epoch_end=stop_after_first))
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint["epoch"] == 1
    result = train(config, data, resume_state=checkpoint)
    assert [row["epoch"] for row in result.history] == [0.0, 1.0]

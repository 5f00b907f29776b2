"""Resume in one process: an interrupted and resumed run equals an
uninterrupted one (weights, queues, optimizers, prototypes, RNG, LR)."""

import pytest
import torch

from rekd_ray.data.datasets import load_dataset
from rekd_ray.training.checkpoint import load_checkpoint, save_checkpoint
from rekd_ray.training.loop import TrainHooks, train
from tests.conftest import tiny_config


def _run(config, data, tmp_path, stop_after=None, resume_state=None):
    def on_epoch_end(metrics, build_state):
        save_checkpoint(build_state(), tmp_path / f"epoch_{int(metrics['epoch']) + 1}")
        if stop_after is not None and metrics["epoch"] + 1 == stop_after:
            raise KeyboardInterrupt

    return train(
        config,
        data,
        hooks=TrainHooks(on_epoch_end=on_epoch_end),
        resume_state=resume_state,
    )


@pytest.mark.parametrize("method", ["rekd", "mocov2"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, method):
    config = tiny_config(
        method=method,
        optim={"epochs": 3, "warmup_epochs": 1},
        runtime={"torch_threads": 1},
    )
    data = load_dataset(config.data, seed=0)
    reference = _run(config, data, tmp_path / "a")

    with pytest.raises(KeyboardInterrupt):
        _run(config, data, tmp_path / "b", stop_after=2)
    checkpoint = load_checkpoint(tmp_path / "b" / "epoch_2")
    assert checkpoint["epoch"] == 2
    resumed = _run(config, data, tmp_path / "b", resume_state=checkpoint)

    assert [row["epoch"] for row in resumed.history] == [0.0, 1.0, 2.0]
    # Same prototypes version sequence, same learning-rate position.
    for key in ("kd/prototype_version", "train/loss"):
        if key in reference.history[-1]:
            assert resumed.history[-1][key] == pytest.approx(
                reference.history[-1][key], rel=1e-5
            )
    expected = reference.method.state_dict()
    for name, tensor in resumed.method.state_dict().items():
        # One process on the CPU is deterministic: equal to float rounding.
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6)

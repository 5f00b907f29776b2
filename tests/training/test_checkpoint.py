"""Checkpoints are atomic and load with weights_only=True."""

import pytest
import torch

from rekd_ray.training.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    save_checkpoint,
)


def test_round_trip(tmp_path):
    state = {"epoch": 3, "method": {"w": torch.ones(2)}, "history": [{"a": 1.0}]}
    save_checkpoint(state, tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert loaded["epoch"] == 3
    assert torch.equal(loaded["method"]["w"], torch.ones(2))
    assert list(tmp_path.iterdir()) == [tmp_path / CHECKPOINT_FILE]


def test_failed_write_keeps_the_previous_file(tmp_path):
    save_checkpoint({"epoch": 1}, tmp_path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"epoch": 2, "bad": Unpicklable()}, tmp_path)
    assert load_checkpoint(tmp_path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]


def test_not_a_checkpoint(tmp_path):
    torch.save({"x": 1}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="not a rekd-ray checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing")

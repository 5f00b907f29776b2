"""Offline-teacher features computed once into a shared store."""

import numpy as np
import pytest
import ray
import torch

from rekd_ray.data.datasets import load_dataset
from rekd_ray.sweep.runs import ChildRun
from rekd_ray.sweep.spec import load_sweep
from rekd_ray.sweep.teacher_reuse import SharedTeachers, teacher_group
from rekd_ray.sweep.trial import CONTEXT_KEY, trial_config
from rekd_ray.training.methods import build_method
from tests.conftest import tiny_config
from tests.sweep.helpers import write_sweep


def teacher_checkpoint(directory) -> str:
    """A checkpoint whose student is a random shufflenet (the teacher)."""
    config = tiny_config(method="mocov2", student={"backbone": "shufflenet_v2_x1_0"})
    method = build_method(config, load_dataset(config.data, seed=0))
    path = directory / "teacher.pt"
    state = {
        "format_version": 1,
        "config": config.model_dump(mode="json"),
        "method": method.state_dict(),
    }
    torch.save(state, path)
    return str(path)


def _offline_sweep(tmp_path):
    checkpoint = teacher_checkpoint(tmp_path)
    return load_sweep(
        write_sweep(
            tmp_path,
            {"grid": {"relation.num_prototypes": [4, 8], "seed": [0, 1]}},
            teacher={"kind": "offline", "checkpoint": checkpoint},
        )
    )


def test_groups_share_teacher_data_and_seed(tmp_path):
    sweep = _offline_sweep(tmp_path)
    groups = [teacher_group(trial.config) for trial in sweep.trials]
    # M varies within a group; the seed orders the samples: one group per seed.
    assert len(set(groups)) == 2
    assert teacher_group(tiny_config()) is None  # online teachers are not shared


def test_trial_config_resolves_paths_names_and_shared_store(tmp_path):
    sweep = _offline_sweep(tmp_path)
    group = teacher_group(sweep.trials[0].config)
    params = {
        "relation.num_prototypes": 4,
        "seed": 0,
        CONTEXT_KEY: {
            "sweep": "s",
            "fixed": sweep.fixed_raw,
            "variants": {},
            "grid_keys": ["relation.num_prototypes", "seed"],
            "cwd": "/somewhere",
            "shared_teachers": {group: "store-x"},
        },
    }
    config = trial_config(params)
    assert config.name == "s:num_prototypes=4,seed=0"
    assert config.runtime.storage_path == "/somewhere/rekd_runs"
    assert config.teacher.features_store == "store-x"


@pytest.mark.ray
def test_shared_store_holds_the_features_the_method_would_push(ray_local, tmp_path):
    sweep = _offline_sweep(tmp_path)
    config = sweep.trials[0].config
    with SharedTeachers(sweep, "parent0000") as teachers:
        assert len(teachers.names()) == 2
        name = teachers.names()[teacher_group(config)]
        store = ray.get_actor(name, namespace="rekd")
        state = ray.get(store.state.remote())
        assert state["filled"].all()
        data = load_dataset(config.data, seed=config.seed)
        method = build_method(config, data, relation_source=object())
        indices = torch.arange(8)
        expected = method._teacher_embedding(indices, None).numpy()
        np.testing.assert_allclose(state["features"][:8], expected, atol=1e-5)
        # Two trials ran 2 epochs each with this store: 4 passes were saved,
        # minus the shared passes' whole cost.
        children = [
            ChildRun(
                "a", "a", "FINISHED", {"teacher.features_store": name}, {"epoch": 1}
            ),
            ChildRun(
                "b", "b", "FINISHED", {"teacher.features_store": name}, {"epoch": 1}
            ),
        ]
        timing = teachers.timings[teacher_group(config)]
        total = sum(t["total_seconds"] for t in teachers.timings.values())
        assert teachers.seconds_saved(children) == pytest.approx(
            4 * timing["embed_seconds"] - total
        )

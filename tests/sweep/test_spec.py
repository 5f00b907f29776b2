"""Sweep files: expansion into trials and the errors that name the field."""

import pytest

from rekd_ray.sweep.spec import SweepError, check_field, load_sweep
from tests.sweep.helpers import write_sweep


def test_grid_is_a_cross_product_with_variants(tmp_path):
    path = write_sweep(
        tmp_path,
        {
            "grid": {"relation.num_prototypes": [4, 8], "seed": [0, 1]},
            "variants": [
                {"name": "online", "set": {}},
                {"name": "mocov2", "set": {"method": "mocov2"}},
            ],
            "set": {"optim.epochs": 1},
        },
    )
    sweep = load_sweep(path)
    assert len(sweep.trials) == 8
    first = sweep.trials[0]
    assert first.label == "online,num_prototypes=4,seed=0"
    assert first.config.optim.epochs == 1
    assert first.setting == {"variant": "online", "relation.num_prototypes": 4}
    assert {t.config.method.value for t in sweep.trials} == {"rekd", "mocov2"}
    assert sweep.varying_keys == ["variant", "relation.num_prototypes", "seed"]


def test_left_out_grid_means_one_trial_of_the_base(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {}))
    assert [trial.label for trial in sweep.trials] == ["base"]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"grid": {"student.backbonee": ["resnet18"]}}, "grid.student.backbonee"),
        ({"grid": {"optim": [1]}}, "is a section"),
        ({"grid": {"seed.x": [1]}}, "is a field, not a section"),
        ({"grid": {}}, "grid: is empty"),
        ({"grid": {"seed": []}}, "grid.seed: has no values"),
        ({"grid": {"student.backbone": ["vgg"]}}, "student.backbone"),
        ({"grid": {"seed": [0]}, "baseline": {"method": "x"}}, "baseline.method"),
        ({"grids": {"seed": [0]}}, "grids: unknown key"),
        ({"variants": []}, "variants: is empty"),
    ],
)
def test_bad_sweeps_name_the_field(tmp_path, sweep, message):
    with pytest.raises(SweepError, match=message.replace(".", r"\.")):
        load_sweep(write_sweep(tmp_path, sweep))


def test_check_field_accepts_leaves():
    check_field("relation.num_prototypes", "grid")
    check_field("seed", "grid")

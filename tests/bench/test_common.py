"""The pieces every benchmark shares: checks, step timing, the JSON file."""

import json
import math

import pytest

from rekd_ray.bench.common import BenchResult, Check, write_json
from rekd_ray.bench.workload import StepClock


@pytest.mark.parametrize(
    ("op", "value", "met"),
    [("<=", 1.0, True), ("<=", 1.2, False), (">=", 1.0, True), (">=", 0.9, False)],
)
def test_check_compares_value_with_threshold(op, value, met):
    check = Check("x", value, op, 1.0)
    assert check.met is met
    assert check.to_json()["target"] == f"{op} 1"


def test_a_nan_measurement_never_meets_its_target():
    assert not Check("x", math.nan, "<=", 1.0).met


def test_step_clock_times_consecutive_steps_of_one_epoch_after_warmup():
    moments = iter([0.0, 1.0, 3.0, 5.0, 100.0, 102.0, 104.0])
    clock = StepClock(batch_size=10, warmup_steps=2, clock=lambda: next(moments))
    hooks = clock.hooks()
    epoch = 0
    for step, step_epoch in [(1, 0), (2, 0), (3, 0), (4, 0), (5, 1), (6, 1), (7, 1)]:
        if step_epoch != epoch:
            hooks.on_epoch_end({}, dict)
            epoch = step_epoch
        hooks.on_step(step, 7, {})
    # Steps 3 and 4 (2 s each), then 6 and 7 (2 s each): the epoch end and
    # the warm-up are left out.
    summary = clock.summary()
    assert summary["timed_steps"] == 4
    assert summary["step_seconds"] == pytest.approx(2.0)
    assert summary["images_per_s"] == pytest.approx(5.0)


def test_json_file_round_trips(tmp_path):
    result = BenchResult(
        "data", True, {"batch_size": 4}, {"x": 1.5}, [Check("x", 1.5, ">=", 1.0)]
    )
    path = write_json(result, tmp_path / "deep" / "data.json")
    loaded = json.loads(path.read_text())
    assert loaded["benchmark"] == "data"
    assert loaded["targets_met"] is True
    assert loaded["checks"][0]["met"] is True

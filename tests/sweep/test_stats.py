"""Mean and 95 % intervals, checked against hand-computed values."""

import math

import pytest

from rekd_ray.sweep.compare import _settings, parse_baseline
from rekd_ray.sweep.stats import difference_interval, mean_interval

# t quantiles from a table: t(0.975, 2) and t(0.975, 4).
T_975_DF2 = 4.302652729911275
T_975_DF4 = 2.7764451051977987


def test_mean_interval_of_three_values():
    # mean 2, sample sd 1, n 3: 2 +- t(0.975, 2) / sqrt(3) = 2 +- 2.4841
    interval = mean_interval([1.0, 2.0, 3.0])
    assert interval.mean == pytest.approx(2.0)
    assert interval.half_width == pytest.approx(T_975_DF2 / math.sqrt(3))
    assert interval.low == pytest.approx(2.0 - 2.484137711750)
    assert interval.high == pytest.approx(2.0 + 2.484137711750)
    assert interval.n == 3


def test_one_value_has_no_interval():
    interval = mean_interval([80.0])
    assert interval.mean == 80.0
    assert not interval.defined


def test_equal_values_have_a_zero_width_interval():
    interval = mean_interval([5.0, 5.0])
    assert (interval.low, interval.high) == (5.0, 5.0)


def test_welch_difference_of_two_settings():
    # means 2 and 1; each variance of the mean 1/3; df = 4 (equal sizes and
    # spreads): 1 +- t(0.975, 4) * sqrt(2/3) = 1 +- 2.2670
    diff = difference_interval([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    assert diff.mean == pytest.approx(1.0)
    assert diff.half_width == pytest.approx(T_975_DF4 * math.sqrt(2 / 3))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])
    with pytest.raises(ValueError, match="confidence"):
        mean_interval([1.0], confidence=95)


def test_settings_pair_each_backbone_with_its_own_baseline():
    def trial(backbone, method, value):
        return {
            "params": {"student.backbone": backbone, "method": method},
            "final/linear_top1": value,
        }

    trials = [
        trial("a", "mocov2", 70.0),
        trial("a", "mocov2", 72.0),
        trial("a", "rekd", 75.0),
        trial("a", "rekd", 77.0),
        trial("b", "mocov2", 60.0),
        trial("b", "rekd", 61.0),
    ]
    rows = _settings(
        trials,
        ["student.backbone", "method"],
        "final/linear_top1",
        {"method": "mocov2"},
    )
    by_setting = {tuple(row["params"].values()): row for row in rows}
    assert by_setting[("a", "mocov2")]["baseline"] is True
    assert by_setting[("a", "rekd")]["diff"] == pytest.approx(5.0)
    assert by_setting[("a", "rekd")]["n"] == 2
    assert by_setting[("b", "rekd")]["diff"] == pytest.approx(1.0)
    assert math.isnan(by_setting[("b", "rekd")]["diff_low"])  # one seed each


def test_parse_baseline():
    assert parse_baseline("method=mocov2, seed=1") == {"method": "mocov2", "seed": "1"}
    assert parse_baseline(None) is None
    with pytest.raises(ValueError, match="--baseline"):
        parse_baseline("mocov2")

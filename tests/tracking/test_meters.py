import pytest

from rekd_ray.tracking.meters import MetricMeters


def test_sample_weighted_average():
    meters = MetricMeters()
    meters.update({"loss": 1.0}, count=1)
    meters.update({"loss": 4.0}, count=3)
    assert meters.averages() == {"loss": pytest.approx(13.0 / 4.0)}
    assert meters.last == {"loss": 4.0}
    assert meters.synced() == meters.averages()


def test_reset_and_bad_count():
    meters = MetricMeters()
    meters.update({"a": 2.0})
    meters.reset()
    assert meters.averages() == {}
    with pytest.raises(ValueError, match="count"):
        meters.update({"a": 1.0}, count=0)

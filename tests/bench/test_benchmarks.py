"""Every benchmark in quick mode, in this process, on the session's Ray.

Checks the JSON's fields and that measurements are positive and finite;
never how fast anything was (timings on a shared machine are noise).
"""

from __future__ import annotations

import json
import math

import pytest

from rekd_ray.bench import BENCHMARK_NAMES, run_benchmark

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def results(ray_local):
    """Each benchmark's JSON, run once for all the tests of this module."""
    return {name: run_benchmark(name, quick=True).to_json() for name in BENCHMARK_NAMES}


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_json_has_environment_params_and_checks(results, name):
    result = json.loads(json.dumps(results[name]))  # JSON-serializable
    assert result["benchmark"] == name
    assert result["quick"] is True
    assert _positive(result["seconds"])
    env = result["environment"]
    assert env["cpu_count"] >= 1
    assert "gpu" in env  # None without one
    for package in ("torch", "ray", "faiss"):
        assert env["versions"][package], package
    assert result["params"]
    assert result["checks"]
    for check in result["checks"]:
        assert math.isfinite(check["value"]), check
        assert check["op"] in ("<=", ">=")
        assert isinstance(check["met"], bool)
        assert check["target"] == f"{check['op']} {check['threshold']:g}"
    assert result["targets_met"] == all(c["met"] for c in result["checks"])


def test_overhead_fields(results):
    measured = results["overhead"]["results"]
    for path in ("in_process", "ray_train"):
        assert _positive(measured[path]["images_per_s"])
        assert measured[path]["timed_steps"] >= 1
    assert _positive(measured["ratio"])


def test_step_fields(results):
    (row,) = results["step"]["results"]["students"]
    for key in ("mocov2_step_seconds", "rekd_step_seconds", "ratio"):
        assert _positive(row[key]), key
    assert 0 < row["relation_share"] < 1


def test_clustering_fields(results):
    measured = results["clustering"]["results"]
    assert {(row["n"], row["m"]) for row in measured["grid"]} == {
        (10_000, 10),
        (10_000, 100),
        (10_000, 1000),
    }
    for row in measured["grid"]:
        assert _positive(row["service_seconds"]) and _positive(row["faiss_seconds"])
    assert all(_positive(row["sklearn_seconds"]) for row in measured["sklearn"])
    waits = measured["prototype_wait"]
    assert _positive(waits["epoch_seconds"])
    assert 0 <= waits["share"] < 1


def test_store_fields(results):
    (row,) = results["store"]["results"]["sizes"]
    for key in (
        "write_rows_per_s",
        "snapshot_mb_per_s",
        "pickup_seconds",
        "pickup_blocked_seconds",
    ):
        assert _positive(row[key]), key


def test_data_fields(results):
    measured = results["data"]["results"]
    assert [row["workers"] for row in measured["loaders"]] == [0, 1, 2]
    for row in measured["loaders"]:
        assert _positive(row["images_per_s"]) and _positive(row["headroom"])
    assert _positive(measured["step"]["images_per_s"])

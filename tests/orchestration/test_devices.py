"""CPU/GPU choices: Train workers, the clustering service, ``--cpu``, faiss."""

import logging

import pytest
from typer.testing import CliRunner

from rekd_ray.cli import app
from rekd_ray.clustering import faiss_import
from rekd_ray.config import ConfigError
from rekd_ray.orchestration import devices
from tests.conftest import tiny_config


@pytest.mark.parametrize(
    ("use_gpu", "gpus", "expected"),
    [(None, 0, False), (None, 1, False), (None, 2, True), (True, 0, True)]
    + [(False, 8, False)],
)
def test_use_gpu_auto_needs_one_gpu_per_worker(use_gpu, gpus, expected):
    assert devices.resolve_use_gpu(use_gpu, 2, gpus) is expected


def test_auto_resolves_to_a_bool_once(monkeypatch):
    monkeypatch.setattr(devices, "visible_gpus", lambda: 4.0)
    config = devices.with_resolved_devices(tiny_config(runtime={"num_workers": 2}))
    assert config.runtime.use_gpu is True
    forced = tiny_config(runtime={"use_gpu": False})
    assert devices.with_resolved_devices(forced) is forced


def test_service_uses_a_gpu_only_when_it_holds_one(caplog):
    assert devices.service_uses_gpu(["0"], faiss_gpus=1)
    # faiss could see a GPU, but Ray gave the actor none: stay off it.
    assert not devices.service_uses_gpu([], faiss_gpus=8)
    with caplog.at_level(logging.WARNING):
        assert not devices.service_uses_gpu(["0"], faiss_gpus=0)
    assert "faiss is a CPU build" in caplog.text


def test_clustering_resources_reach_the_actor_options():
    config = tiny_config(
        runtime={"clustering_gpus": 1, "clustering_resources": {"rekd_clustering": 1}}
    )
    assert devices.clustering_actor_options(config) == {
        "num_gpus": 1.0,
        "resources": {"rekd_clustering": 1.0},
    }
    with pytest.raises(ConfigError, match="custom resources only.*GPU"):
        tiny_config(runtime={"clustering_resources": {"GPU": 1}})


def test_both_faiss_builds_stop_a_run_before_it_starts(monkeypatch):
    monkeypatch.setattr(faiss_import, "_installed", lambda names: list(names[:1]))
    with pytest.raises(ConfigError, match="faiss: both a CPU and a GPU"):
        devices.check_faiss_install(tiny_config())
    devices.check_faiss_install(tiny_config(method="mocov2"))  # needs no faiss


def test_cli_cpu_flag_forces_cpus(monkeypatch, tmp_path):
    from rekd_ray.orchestration import runner

    seen = {}

    def fake_run_training(config, **kwargs):
        seen["runtime"] = config.runtime
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_training", fake_run_training)
    config = tmp_path / "gpu.yaml"
    config.write_text(
        "data: {dataset: synthetic}\nrelation: {num_prototypes: 4}\n"
        "optim: {batch_size: 16}\nmoco: {queue_size: 32}\n"
        "runtime: {use_gpu: true, clustering_gpus: 1}\n"
    )
    result = CliRunner().invoke(app, ["train", str(config), "--cpu", "--json"])
    assert result.exit_code == 130, result.output
    assert seen["runtime"].use_gpu is False
    assert seen["runtime"].clustering_gpus == 0

"""ray_cluster.yaml against the schema inside the installed Ray (no cloud call)."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from rekd_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA.read_text())


def test_matches_the_schema_shipped_with_ray(cluster, schema):
    jsonschema.validate(cluster, schema)
    # Ray's own checks after merging the provider defaults (private API, as
    # `ray up` runs it): head type known, sum of min_workers <= max_workers.
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_the_schema_check_catches_mistakes(cluster, schema):
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = copy.deepcopy(cluster)
    broken["head_node_type"] = "nowhere"
    with pytest.raises(ValueError):
        validate_config(prepare_config(broken))


def test_head_is_cpu_and_gpu_types_autoscale(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types
    for node_type in gpu_types:
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"]
    assert any(t["max_workers"] > t["min_workers"] for t in gpu_types)


def test_clustering_service_lands_on_a_gpu_node(cluster):
    runtime = load_config(REPO / "experiments" / "imagenet_rekd.yaml").runtime
    (wanted,) = runtime.clustering_resources
    hosts = [
        t
        for t in cluster["available_node_types"].values()
        if t["resources"].get(wanted, 0) >= runtime.clustering_resources[wanted]
    ]
    assert hosts, f"no node type offers the custom resource {wanted!r}"
    for node_type in hosts:
        assert node_type["resources"]["GPU"] >= runtime.clustering_gpus
        assert node_type["min_workers"] >= 1  # the service always has a node


def test_one_faiss_build_per_node_and_mlflow_on_the_head(cluster):
    head = " ".join(cluster["head_setup_commands"])
    workers = " ".join(cluster["worker_setup_commands"])
    assert "rekd-ray[cpu]" in head and "[gpu]" not in head
    assert "rekd-ray[gpu]" in workers and "[cpu]" not in workers
    for node_type in cluster["available_node_types"].values():
        assert "worker_setup_commands" not in node_type  # would replace ours
    assert "mlflow server" in " ".join(cluster["head_start_ray_commands"])

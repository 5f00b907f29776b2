"""The shared ClusteringService must outlive the placement group of the run
that happened to create it (a Tune trial's, or Ray Train's)."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# A Ray of its own (address="local"): the service is created fresh, by a task
# that runs in a placement group capturing its children, as a trial does.
SCRIPT = textwrap.dedent(
    """
    import time
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    from rekd_ray.orchestration.clustering_service import (
        RAY_NAMESPACE, get_or_create_clustering_service, service_actor_name,
    )

    ray.init(address="local", num_cpus=1, namespace=RAY_NAMESPACE,
             include_dashboard=False, log_to_driver=False)
    group = placement_group([{"CPU": 0.01}])
    ray.get(group.ready(), timeout=60)

    @ray.remote(num_cpus=0.01)
    def create_service():
        service = get_or_create_clustering_service(num_threads=1)
        return ray.get(service.info.remote())["name"]

    strategy = PlacementGroupSchedulingStrategy(
        group, placement_group_capture_child_tasks=True
    )
    ray.get(create_service.options(scheduling_strategy=strategy).remote())
    remove_placement_group(group)
    time.sleep(2.0)
    service = ray.get_actor(service_actor_name(), namespace=RAY_NAMESPACE)
    print("alive:", ray.get(service.info.remote(), timeout=30)["name"])
    """
)


def test_service_created_inside_a_placement_group_outlives_it():
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "alive: rekd-clustering-" in completed.stdout

"""The Ray side of ReKD: feature store, clustering service, worker-side client.

Uses the session's 2-CPU local Ray (``ray_local``). Every test works in its own
run namespace and kills the actors it creates, except the shared service.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import ray
import torch

from rekd_ray import __version__
from rekd_ray.orchestration.clustering_service import (
    RAY_NAMESPACE,
    ClusteringService,
    get_or_create_clustering_service,
    service_actor_name,
)
from rekd_ray.orchestration.feature_store import TeacherFeatureStore
from rekd_ray.orchestration.ray_relations import RayRelationSource

pytestmark = pytest.mark.ray

WAIT_S = 60.0  # generous upper bound for one clustering on 2 busy cores


def _namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def _blobs(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two tight blobs around orthogonal directions: rows (n, d), truth (n,)."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 2  # interleaved, so index order says nothing
    centers = np.zeros((2, d), dtype=np.float32)
    centers[0, 0] = centers[1, 1] = 1.0
    rows = centers[truth] + 0.05 * rng.standard_normal((n, d)).astype(np.float32)
    return rows.astype(np.float32), truth


def _assert_split(labels: np.ndarray, truth: np.ndarray) -> None:
    """Each blob sits in one prototype, and the two prototypes differ."""
    (a,) = np.unique(labels[truth == 0])
    (b,) = np.unique(labels[truth == 1])
    assert a != b and a >= 0 and b >= 0


@pytest.fixture(scope="module")
def service(ray_local):
    return get_or_create_clustering_service(num_threads=1)


@pytest.fixture
def make_store(ray_local):
    """Factory of TeacherFeatureStore actors, killed after the test."""
    created = []

    def make(num_samples: int, embedding_dim: int, namespace: str | None = None):
        store = TeacherFeatureStore.remote(
            namespace or _namespace(), num_samples, embedding_dim
        )
        created.append(store)
        return store

    yield make
    for store in created:
        ray.kill(store)


@ray.remote(num_cpus=0)
class _Requester:
    """Asks a store for a snapshot and hands back the refs (then gets killed)."""

    def ask(self, store) -> dict:
        snapshot = ray.get(store.snapshot.remote())
        own = ray.put(np.ones(50_000, dtype=np.float32))  # owned by this actor
        return {"snapshot": snapshot, "own": own}


@ray.remote(num_cpus=0, max_concurrency=2)
class _GatedStore:
    """A store whose snapshot takes ``delay_s`` and reports when it started."""

    def __init__(self, features: np.ndarray, delay_s: float) -> None:
        self.features = features
        self.delay_s = delay_s
        self.started = False

    def entered(self) -> bool:
        return self.started

    def snapshot(self) -> dict:
        self.started = True
        time.sleep(self.delay_s)
        return {
            "version": 1,
            "features": ray.put(self.features),
            "filled": ray.put(np.ones(len(self.features), dtype=bool)),
        }


def _wait_until_entered(store, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ray.get(store.entered.remote()):
        assert time.monotonic() < deadline, "the service never asked for a snapshot"
        time.sleep(0.05)


# --------------------------------------------------------------------------
# TeacherFeatureStore


def test_store_snapshot_holds_what_was_written(make_store):
    n, d = 50, 8
    store = make_store(n, d)
    rng = np.random.default_rng(0)
    first = rng.standard_normal((10, d)).astype(np.float32)
    second = rng.standard_normal((3, d)).astype(np.float32)
    assert ray.get(store.write.remote(np.arange(10), first)) == 1
    assert ray.get(store.write.remote(np.array([20, 25, 5]), second)) == 2
    # An empty batch is a valid (no-op) write.
    assert ray.get(store.write.remote(np.array([], dtype=np.int64), first[:0])) == 3

    snap = ray.get(store.snapshot.remote())
    assert snap["version"] == 3
    features, filled = ray.get(snap["features"]), ray.get(snap["filled"])
    assert features.shape == (n, d) and features.dtype == np.float32
    assert filled.shape == (n,) and filled.dtype == bool
    expected = np.zeros((n, d), dtype=np.float32)
    expected[np.arange(10)] = first
    expected[[20, 25, 5]] = second  # index 5 overwritten by the later write
    np.testing.assert_array_equal(features, expected)
    np.testing.assert_array_equal(np.flatnonzero(filled), [*range(10), 20, 25])
    assert not features.flags.writeable  # zero-copy view from the object store

    stats = ray.get(store.stats.remote())
    assert stats["writes"] == 3.0
    assert stats["rows_written"] == 13.0
    assert stats["filled_samples"] == 12.0
    assert stats["write_seconds"] >= 0.0

    # A snapshot is a copy: later writes do not change an earlier one.
    ray.get(store.write.remote(np.array([0]), np.full((1, d), 7.0, np.float32)))
    np.testing.assert_array_equal(ray.get(snap["features"])[0], first[0])


@pytest.mark.parametrize(
    ("indices", "rows", "message"),
    [
        (np.arange(3), np.zeros((2, 8), np.float32), r"must have shape \(3, 8\)"),
        (np.arange(2), np.zeros((2, 4), np.float32), r"must have shape \(2, 8\)"),
        (np.array([0, 20]), np.zeros((2, 8), np.float32), r"must lie in \[0, 20\)"),
        (np.array([-1, 3]), np.zeros((2, 8), np.float32), r"must lie in \[0, 20\)"),
    ],
)
def test_store_rejects_bad_writes(make_store, indices, rows, message):
    store = make_store(20, 8)
    with pytest.raises(ray.exceptions.RayTaskError, match=message) as info:
        ray.get(store.write.remote(indices, rows))
    assert isinstance(info.value, ValueError)
    # Nothing was written, and the actor is still serving.
    stats = ray.get(store.stats.remote())
    assert stats["writes"] == 0.0 and stats["filled_samples"] == 0.0
    assert not ray.get(ray.get(store.snapshot.remote())["filled"]).any()


def test_snapshot_refs_are_owned_by_the_store(make_store):
    n, d = 2000, 16  # 125 KiB: goes through the shared-memory object store
    store = make_store(n, d)
    rows = np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)
    ray.get(store.write.remote(np.arange(n), rows))

    requester = _Requester.remote()
    got = ray.get(requester.ask.remote(store))
    ray.kill(requester)

    # Control: an object put by the requester itself dies with it (Ray learns
    # of the owner's death asynchronously, within a second or two).
    deadline, died = time.monotonic() + 20, False
    while not died and time.monotonic() < deadline:
        try:
            ray.get(got["own"], timeout=5)
            time.sleep(0.2)
        except ray.exceptions.OwnerDiedError:
            died = True
    assert died
    # The snapshot's objects were put by the store: still readable.
    np.testing.assert_array_equal(ray.get(got["snapshot"]["features"]), rows)
    assert ray.get(got["snapshot"]["filled"]).all()


def test_store_state_round_trip(make_store):
    n, d = 40, 8
    source = make_store(n, d)
    rows = np.random.default_rng(2).standard_normal((5, d)).astype(np.float32)
    ray.get(source.write.remote(np.array([1, 3, 5, 7, 39]), rows))
    state = ray.get(source.state.remote())
    assert not state["features"].flags.writeable  # read-only views are fine

    restored = make_store(n, d)
    ray.get(restored.load_state.remote(state))
    a, b = ray.get(source.snapshot.remote()), ray.get(restored.snapshot.remote())
    np.testing.assert_array_equal(ray.get(b["features"]), ray.get(a["features"]))
    np.testing.assert_array_equal(ray.get(b["filled"]), ray.get(a["filled"]))
    assert ray.get(restored.stats.remote())["filled_samples"] == 5.0
    # A restored store keeps accepting writes on top of the loaded table.
    ray.get(restored.write.remote(np.array([0]), rows[:1]))
    assert ray.get(restored.stats.remote())["filled_samples"] == 6.0

    wrong = make_store(n, d + 1)
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(wrong.load_state.remote(state))


# --------------------------------------------------------------------------
# ClusteringService


def _filled_store(make_store, n: int, d: int, seed: int = 0):
    rows, truth = _blobs(n, d, seed)
    store = make_store(n, d)
    ray.get(store.write.remote(np.arange(n), rows))
    return store, truth


def test_service_publishes_monotone_versions_per_namespace(service, make_store):
    n, d = 400, 8
    ns_a, ns_b = _namespace(), _namespace()
    store_a, truth_a = _filled_store(make_store, n, d, seed=0)
    store_b, truth_b = _filled_store(make_store, 300, 12, seed=1)
    assert ray.get(service.latest.remote(ns_a)) is None

    assert ray.get(service.submit.remote(ns_a, store_a, 2, 10)) is False
    published = ray.get(service.wait_for_version.remote(ns_a, 1, WAIT_S))
    assert published is not None and published["version"] == 1
    assignments = ray.get(published["assignments"])
    assert assignments.shape == (n,) and assignments.dtype == np.int64
    _assert_split(assignments, truth_a)
    prototypes = ray.get(published["prototypes"])
    assert prototypes.shape == (2, d)
    np.testing.assert_allclose(np.linalg.norm(prototypes, axis=1), 1.0, atol=1e-4)
    stats = published["stats"]
    assert stats["cluster_seconds"] > 0.0
    assert stats["cluster_size_min"] == stats["cluster_size_max"] == n / 2
    assert stats["empty_clusters"] == 0.0
    assert stats["clustered_samples"] == float(n)
    assert stats["queue_seconds"] >= 0.0

    # A second namespace is independent: its own version 1, its own labels.
    assert ray.get(service.submit.remote(ns_b, store_b, 2, 10)) is False
    published_b = ray.get(service.wait_for_version.remote(ns_b, 1, WAIT_S))
    assert published_b["version"] == 1
    assert ray.get(published_b["assignments"]).shape == (300,)
    _assert_split(ray.get(published_b["assignments"]), truth_b)

    # Another request of run A gives version 2; run B is untouched.
    ray.get(service.submit.remote(ns_a, store_a, 2, 10))
    second = ray.get(service.wait_for_version.remote(ns_a, 2, WAIT_S))
    assert second["version"] == 2
    _assert_split(ray.get(second["assignments"]), truth_a)
    assert ray.get(service.latest.remote(ns_a))["version"] == 2
    assert ray.get(service.latest.remote(ns_b))["version"] == 1
    # Asking for an already published version answers at once.
    assert ray.get(service.wait_for_version.remote(ns_a, 1, WAIT_S))["version"] == 2

    info = ray.get(service.info.remote())
    assert {ns_a, ns_b} <= set(info["runs"])
    assert info["name"] == service_actor_name() and info["num_threads"] >= 1

    ray.get(service.forget.remote(ns_a))
    assert ray.get(service.latest.remote(ns_a)) is None
    assert ns_a not in ray.get(service.info.remote())["runs"]
    assert ray.get(service.latest.remote(ns_b))["version"] == 1
    # After forget, numbering of run A starts again at 1.
    ray.get(service.submit.remote(ns_a, store_a, 2, 10))
    assert ray.get(service.wait_for_version.remote(ns_a, 1, WAIT_S))["version"] == 1
    for ns in (ns_a, ns_b):
        ray.get(service.forget.remote(ns))


def test_wait_returns_promptly_when_too_few_rows(service, make_store):
    ns = _namespace()
    store = make_store(100, 8)
    ray.get(store.write.remote(np.arange(3), np.ones((3, 8), np.float32)))
    completed = ray.get(service.info.remote())["completed"]

    start = time.perf_counter()
    ray.get(service.submit.remote(ns, store, 4, 10))  # M=4 > 3 filled rows
    published = ray.get(service.wait_for_version.remote(ns, 1, 30.0))
    assert published is None
    assert time.perf_counter() - start < 10.0
    assert ray.get(service.info.remote())["completed"] == completed
    assert ns not in ray.get(service.info.remote())["runs"]


def test_failed_clustering_wakes_waiters_and_service_keeps_serving(service, make_store):
    ns = _namespace()
    bad = make_store(100, 8)
    # Rows of zeros have no direction: spherical k-means refuses them.
    ray.get(bad.write.remote(np.arange(100), np.zeros((100, 8), np.float32)))
    start = time.perf_counter()
    ray.get(service.submit.remote(ns, bad, 2, 10))
    assert ray.get(service.wait_for_version.remote(ns, 1, 30.0)) is None
    assert time.perf_counter() - start < 10.0

    good, truth = _filled_store(make_store, 200, 8)
    ray.get(service.submit.remote(ns, good, 2, 10))
    published = ray.get(service.wait_for_version.remote(ns, 1, WAIT_S))
    assert published["version"] == 1
    _assert_split(ray.get(published["assignments"]), truth)
    ray.get(service.forget.remote(ns))


def test_get_or_create_returns_the_one_named_service(service):
    again = get_or_create_clustering_service()
    assert again._actor_id == service._actor_id
    by_name = ray.get_actor(service_actor_name(), namespace=RAY_NAMESPACE)
    assert by_name._actor_id == service._actor_id
    assert __version__ in service_actor_name()
    assert ray.get(again.info.remote())["name"] == service_actor_name()


# --------------------------------------------------------------------------
# Replacement of queued requests


def test_newer_request_replaces_a_queued_one(service, make_store):
    busy_ns, ns = _namespace(), _namespace()
    rows, _ = _blobs(400, 8)
    slow = _GatedStore.remote(rows, 1.5)  # stands in for a big store
    store, truth = _filled_store(make_store, 400, 8)
    try:
        completed = ray.get(service.info.remote())["completed"]
        ray.get(service.submit.remote(busy_ns, slow, 2, 5))
        _wait_until_entered(slow)  # the service thread is inside the snapshot

        # Five requests of one run while the service is busy: each replaces
        # the one before; the last one (M=6) is what gets clustered.
        replaced = [
            ray.get(service.submit.remote(ns, store, m, 10)) for m in range(2, 7)
        ]
        assert replaced == [False, True, True, True, True]
        assert ray.get(service.info.remote())["pending"] == 1

        published = ray.get(service.wait_for_version.remote(ns, 1, WAIT_S))
        assert published["version"] == 1
        assert ray.get(published["prototypes"]).shape == (6, 8)
        labels = ray.get(published["assignments"])
        # M=6 on two blobs: every prototype holds points of one blob only.
        for label in np.unique(labels):
            assert len(np.unique(truth[labels == label])) == 1

        info = ray.get(service.info.remote())
        assert info["pending"] == 0
        assert ray.get(service.latest.remote(ns))["version"] == 1  # 1 of 5 ran
        assert ray.get(service.latest.remote(busy_ns))["version"] == 1
        assert info["completed"] - completed == 2  # busy run + run ns
    finally:
        ray.kill(slow)
        for name in (busy_ns, ns):
            ray.get(service.forget.remote(name))


# --------------------------------------------------------------------------
# RayRelationSource


def _push_blobs(source: RayRelationSource, rows: np.ndarray, batch: int) -> None:
    for start in range(0, len(rows), batch):
        idx = torch.arange(start, min(start + batch, len(rows)))
        source.push(idx, torch.from_numpy(rows[idx.numpy()]))


def test_source_push_buffers_until_flush(service, make_store):
    d = 8
    store = make_store(300, d)
    source = RayRelationSource(
        _namespace(), store, service, 2, flush_rows=100, max_in_flight=2
    )
    rows, _ = _blobs(300, d)

    _push_blobs(source, rows[:80], 40)  # 80 rows < flush_rows
    assert ray.get(store.stats.remote())["writes"] == 0.0
    source.push(torch.arange(80, 120), torch.from_numpy(rows[80:120]))  # 120 >= 100
    stats = ray.get(store.stats.remote())
    assert stats["writes"] == 1.0 and stats["rows_written"] == 120.0

    source.push(torch.arange(120, 130), torch.from_numpy(rows[120:130]))
    assert ray.get(store.stats.remote())["writes"] == 1.0
    source.flush()
    stats = ray.get(store.stats.remote())
    assert stats["writes"] == 2.0 and stats["rows_written"] == 130.0
    source.flush()  # nothing buffered: no empty write
    assert ray.get(store.stats.remote())["writes"] == 2.0

    # Many flushes: outstanding writes stay bounded by max_in_flight.
    for start in range(130, 300, 10):
        source.push(
            torch.arange(start, start + 10), torch.from_numpy(rows[start:][:10])
        )
        source.flush()
        assert len(source._writes_in_flight) <= 2
    source.push(torch.tensor([0]), torch.from_numpy(rows[:1]))
    source.close()  # flushes the rest and waits for every write
    assert source._writes_in_flight == []
    stats = ray.get(store.stats.remote())
    assert stats["writes"] == 20.0 and stats["filled_samples"] == 300.0
    snap = ray.get(store.snapshot.remote())
    np.testing.assert_array_equal(ray.get(snap["features"]), rows)


def test_source_refresh_lookup_and_stale_versions(service, make_store):
    n, d = 600, 8
    ns = _namespace()
    store = make_store(n, d)
    source = RayRelationSource(
        ns, store, service, 2, iterations=10, flush_rows=128, first_wait_timeout_s=60
    )
    rows, truth = _blobs(n, d)
    written = np.arange(n - 100)  # the last 100 samples are never written

    probe = torch.tensor([0, 1, n - 1, -1])
    assert source.version == 0 and source.assignments() is None
    assert source.lookup(probe).tolist() == [-1, -1, -1, -1]
    assert source.refresh() is False  # nothing published yet

    _push_blobs(source, rows[written], 64)
    source.request_clustering()
    assert source.refresh(wait=True) is True
    assert source.version == 1
    labels = source.lookup(torch.arange(n)).numpy()
    _assert_split(labels[written], truth[written])
    assert (labels[n - 100 :] == -1).all()
    looked = source.lookup(probe)
    assert looked.dtype == torch.int64
    assert looked[2].item() == -1 and looked[3].item() == -1
    assert looked[0].item() != looked[1].item()  # indices 0 and 1: different blobs
    assert source.assignments().flags.writeable  # a private, writable copy
    stats = source.stats()
    assert stats["prototype_version"] == 1.0
    assert stats["cluster_size_min"] + stats["cluster_size_max"] == n - 100
    assert stats["stale_versions_ignored"] == 0.0
    assert "clustered_samples" not in stats
    assert stats["prototype_wait_seconds"] > 0.0

    # Non-blocking refresh picks up version 2 after another request.
    source.request_clustering()
    slowest, changed = 0.0, False
    for _ in range(600):
        start = time.perf_counter()
        changed = source.refresh(wait=False)
        slowest = max(slowest, time.perf_counter() - start)
        if changed:
            break
        time.sleep(0.05)
    assert changed and source.version == 2
    assert slowest < 1.0  # never waits on the clustering
    _assert_split(source.lookup(torch.arange(n)).numpy()[written], truth[written])

    # An older version (e.g. from a restarted service) is ignored and counted.
    held = source.assignments().copy()
    old = ray.get(service.latest.remote(ns)) | {"version": 1}
    assert source._accept(old) is False
    assert source._accept(ray.get(service.latest.remote(ns))) is False  # same
    assert source.version == 2
    np.testing.assert_array_equal(source.assignments(), held)
    assert source.stats()["stale_versions_ignored"] == 1.0
    ray.get(service.forget.remote(ns))


def test_source_keeps_its_version_across_a_service_restart(ray_local, make_store):
    n, d = 300, 8
    ns, name = _namespace(), f"test-service-{uuid.uuid4().hex[:8]}"

    def named_service():
        return ClusteringService.options(
            name=name, namespace=RAY_NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote(1)

    first = named_service()
    store = make_store(n, d)
    source = RayRelationSource(ns, store, first, 2, iterations=5, flush_rows=64)
    rows, truth = _blobs(n, d)
    _push_blobs(source, rows, 100)
    for expected in (1, 2):
        source.request_clustering()
        assert source.refresh(wait=True) is True and source.version == expected
    held = source.assignments().copy()

    ray.kill(first)
    second = named_service()
    try:
        assert second._actor_id != first._actor_id
        source.service = second  # what a worker gets by looking the name up again
        source.request_clustering()
        # The restarted service publishes version 1 < 2: not taken.
        assert source.refresh(wait=True) is False
        assert ray.get(second.latest.remote(ns))["version"] == 1
        assert source.version == 2
        np.testing.assert_array_equal(source.assignments(), held)
        assert source.stats()["stale_versions_ignored"] == 1.0
        _assert_split(source.lookup(torch.arange(n)).numpy(), truth)
    finally:
        ray.kill(second)


# --------------------------------------------------------------------------
# Regressions: waits that end promptly, waiters that do not starve the service,
# forgotten runs that stay forgotten, no false stale versions.


def test_wait_after_a_finished_skip_returns_promptly(service, make_store):
    ns, marker = _namespace(), _namespace()
    few = make_store(100, 8)
    ray.get(few.write.remote(np.arange(3), np.ones((3, 8), np.float32)))
    full, _ = _filled_store(make_store, 200, 8)
    ray.get(service.submit.remote(ns, few, 4, 5))  # will be skipped (3 < M=4)
    ray.get(service.submit.remote(marker, full, 2, 5))
    # Requests run one at a time in order: once `marker` is published, the
    # skipped attempt of `ns` has certainly ended.
    assert ray.get(service.wait_for_version.remote(marker, 1, WAIT_S)) is not None
    try:
        start = time.perf_counter()
        assert ray.get(service.wait_for_version.remote(ns, 1, 2.0)) is None
        assert time.perf_counter() - start < 1.0
    finally:
        for name in (ns, marker):
            ray.get(service.forget.remote(name))


def test_blocked_waiters_do_not_starve_other_calls(service):
    waits = [service.wait_for_version.remote(_namespace(), 1, 2.0) for _ in range(16)]
    try:
        time.sleep(0.3)
        start = time.perf_counter()
        ray.get(service.latest.remote(_namespace()))
        assert time.perf_counter() - start < 0.8
    finally:
        ray.get(waits)


def test_forget_during_clustering_stays_forgotten(service):
    ns = _namespace()
    rows, _ = _blobs(200, 8)
    gated = _GatedStore.remote(rows, 0.5)
    try:
        ray.get(service.submit.remote(ns, gated, 2, 5))
        _wait_until_entered(gated)
        ray.get(service.forget.remote(ns))
        # The attempt ends (no version can be published for a forgotten run).
        ray.get(service.wait_for_version.remote(ns, 1, 10.0))
        assert ray.get(service.latest.remote(ns)) is None
        assert ns not in ray.get(service.info.remote())["runs"]
    finally:
        ray.get(service.forget.remote(ns))
        ray.kill(gated)


def test_own_outdated_poll_is_not_a_stale_version(service, make_store):
    n, d = 200, 8
    ns = _namespace()
    store, _ = _filled_store(make_store, n, d)
    source = RayRelationSource(ns, store, service, 2, iterations=5)
    try:
        source.request_clustering()
        assert source.refresh(wait=True) and source.version == 1
        assert source.refresh() is False  # starts a latest() poll
        ray.wait([source._latest_call], timeout=30)  # ...which answers version 1
        source.request_clustering()
        assert source.refresh(wait=True) and source.version == 2
        assert source.refresh() is False and source.version == 2
        assert source.stats()["stale_versions_ignored"] == 0.0
    finally:
        ray.get(service.forget.remote(ns))

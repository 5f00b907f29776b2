"""Tests of the faiss spherical k-means wrapper and the faiss import guard."""

import importlib.metadata
import sys
import warnings

import numpy as np
import pytest
import torch

from rekd_ray.clustering import (
    ClusteringInputError,
    KMeansResult,
    faiss_gpu_count,
    import_faiss,
    spherical_kmeans,
)


def blobs(points_per_blob: int = 40, d: int = 8, seed: int = 0):
    """Three tight blobs around orthogonal directions; returns (x, blob id)."""
    rng = np.random.default_rng(seed)
    centers = np.eye(d, dtype=np.float32)[:3] * 5.0  # (3, D)
    blob = np.repeat(np.arange(3), points_per_blob)  # (N,)
    x = centers[blob] + 0.2 * rng.standard_normal((blob.size, d)).astype(np.float32)
    return x, blob


def run_quietly(*args, **kwargs) -> KMeansResult:
    """spherical_kmeans with the few-points warning silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return spherical_kmeans(*args, **kwargs)


def test_blobs_are_recovered_without_warning():
    x, blob = blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 120 >= 39 * 3: no warning expected
        result = spherical_kmeans(x, 3, seed=0)
    clusters = [set(result.assignments[blob == b].tolist()) for b in range(3)]
    assert all(len(c) == 1 for c in clusters)
    assert len(set.union(*clusters)) == 3


def test_result_types_shapes_and_counts():
    x, _ = blobs()
    result = spherical_kmeans(x, 3)
    assert result.centroids.shape == (3, 8) and result.centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1, atol=1e-5)
    assert result.assignments.shape == (120,) and result.assignments.dtype == np.int64
    assert result.cluster_sizes.dtype == np.int64
    assert result.cluster_sizes.sum() == 120 and result.num_empty == 0
    np.testing.assert_array_equal(
        result.cluster_sizes, np.bincount(result.assignments, minlength=3)
    )
    assert 0 < result.objective <= 120 + 1e-3
    assert result.seconds >= 0 and result.used_gpu is False


def test_fewer_points_than_prototypes_raises_our_error():
    with pytest.raises(
        ClusteringInputError,
        match=r"cannot cluster 10 points into "
        r"num_prototypes=16 clusters: need at least 16 points",
    ):
        spherical_kmeans(np.random.default_rng(0).random((10, 4)), 16)


def test_identical_rows_give_one_non_empty_cluster():
    with pytest.warns(UserWarning, match="64 points into num_prototypes=4"):
        result = spherical_kmeans(np.ones((64, 8), dtype=np.float32), 4)
    assert result.assignments.min() >= 0 and result.assignments.max() < 4
    assert len(np.unique(result.assignments)) == 1
    assert result.num_empty == 3 and sorted(result.cluster_sizes) == [0, 0, 0, 64]


def test_as_many_points_as_prototypes():
    x, _ = blobs(points_per_blob=1)
    result = run_quietly(x, 3)
    assert sorted(result.assignments) == [0, 1, 2]
    assert result.objective == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.nan, r"1 of 120 rows with non-finite values"),
        (np.inf, r"1 of 120 rows with non-finite values"),
        (0.0, r"1 of 120 rows with zero norm"),
    ],
)
def test_bad_rows_raise(bad, match):
    x, _ = blobs()
    x[7] = bad
    with pytest.raises(ClusteringInputError, match=match):
        spherical_kmeans(x, 3)


@pytest.mark.parametrize(
    ("features", "num_prototypes", "match"),
    [
        (np.ones(8), 2, r"shape \(N, D\).*got \(8,\)"),
        (np.ones((0, 4)), 2, r"N > 0 and D > 0, got \(0, 4\)"),
        (np.ones((8, 4), dtype=np.int64), 2, r"floating point, got dtype int64"),
        (torch.ones(8, 4, dtype=torch.long), 2, r"floating point.*torch.int64"),
        (np.ones((8, 4)), 0, r"num_prototypes must be an int >= 1, got 0"),
        (np.ones((8, 4)), 2.0, r"num_prototypes must be an int >= 1, got 2.0"),
    ],
)
def test_bad_input_raises(features, num_prototypes, match):
    with pytest.raises(ClusteringInputError, match=match):
        spherical_kmeans(features, num_prototypes)


def test_bad_keyword_raises():
    x, _ = blobs()
    with pytest.raises(ClusteringInputError, match=r"iterations must be .*got 0"):
        spherical_kmeans(x, 3, iterations=0)
    with pytest.raises(ClusteringInputError, match=r"num_threads must be None or"):
        spherical_kmeans(x, 3, num_threads=-1)
    assert issubclass(ClusteringInputError, ValueError)


def test_float64_and_transposed_inputs_give_the_same_labels():
    x, _ = blobs()
    expected = spherical_kmeans(x, 3, seed=1).assignments
    fortran = np.asfortranarray(x.astype(np.float64))
    transposed_view = np.ascontiguousarray(x.T).T  # .T of a (D, N) array
    strided = np.repeat(x, 2, axis=1)[:, ::2]
    for variant in (x.astype(np.float64), fortran, transposed_view, strided):
        np.testing.assert_array_equal(
            spherical_kmeans(variant, 3, seed=1).assignments, expected
        )


def test_scale_invariance():
    x, _ = blobs()
    factors = np.random.default_rng(1).uniform(0.01, 100.0, (len(x), 1))
    scaled = (x * factors).astype(np.float32)
    np.testing.assert_array_equal(
        spherical_kmeans(scaled, 3, seed=2).assignments,
        spherical_kmeans(x, 3, seed=2).assignments,
    )


def test_same_seed_same_result():
    x = np.random.default_rng(3).standard_normal((300, 8)).astype(np.float32)
    first, second = spherical_kmeans(x, 5, seed=7), spherical_kmeans(x, 5, seed=7)
    np.testing.assert_array_equal(first.assignments, second.assignments)
    np.testing.assert_array_equal(first.centroids, second.centroids)
    assert first.objective == second.objective


def test_callers_array_and_tensor_are_unchanged():
    x, _ = blobs()
    x_before = x.copy()
    spherical_kmeans(x, 3)
    np.testing.assert_array_equal(x, x_before)
    tensor = torch.from_numpy(x.copy())
    spherical_kmeans(tensor, 3)
    assert torch.equal(tensor, torch.from_numpy(x_before))


def test_torch_tensor_input_matches_numpy():
    x, _ = blobs()
    expected = spherical_kmeans(x, 3, seed=4).assignments
    tensor = torch.from_numpy(x.copy()).requires_grad_()
    np.testing.assert_array_equal(
        spherical_kmeans(tensor, 3, seed=4).assignments, expected
    )
    bf16 = spherical_kmeans(torch.from_numpy(x).bfloat16(), 3, seed=4)
    assert bf16.cluster_sizes.sum() == len(x)


def test_few_points_warn_exactly_once_and_faiss_stays_quiet(capfd):
    x = np.random.default_rng(5).standard_normal((50, 4)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = spherical_kmeans(x, 4)
    assert len(caught) == 1 and caught[0].category is UserWarning
    assert "50 points into num_prototypes=4" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller
    assert "WARNING" not in capfd.readouterr().err
    assert result.cluster_sizes.sum() == 50


def test_threads_restored_and_subsample_cap_accepted():
    faiss = import_faiss()
    before = faiss.omp_get_max_threads()
    x, _ = blobs()
    result = spherical_kmeans(x, 3, num_threads=1, max_points_per_centroid=5)
    assert faiss.omp_get_max_threads() == before
    assert result.cluster_sizes.sum() == 120  # all points assigned, not just 15


def test_gpu_requested_without_gpu_raises():
    assert faiss_gpu_count() == 0  # faiss-cpu on the test machines
    x, _ = blobs()
    with pytest.raises(RuntimeError, match=r"use_gpu=True but faiss sees no GPU"):
        spherical_kmeans(x, 3, use_gpu=True)


def test_import_faiss_refuses_cpu_and_gpu_builds_together(monkeypatch):
    def version(name):
        if name in ("faiss-cpu", "faiss-gpu-cu12"):
            return "1.15.1"
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(
        ImportError,
        match=r"faiss-cpu, faiss-gpu-cu12.*uninstall one: "
        r"they both install the module faiss",
    ):
        import_faiss()
    assert faiss_gpu_count() == 0  # never raises


def test_import_faiss_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"pip install 'rekd-ray\[cpu\]'"):
        import_faiss()
    assert faiss_gpu_count() == 0

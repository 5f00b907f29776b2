"""De-duplication of rows before the final assignment (hash, then verify)."""

import numpy as np
import pytest

from rekd_ray.clustering import kmeans


def _rows(n: int = 500, d: int = 16) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    x[7] = x[3]
    x[100:150] = x[200]
    return x


def _check_groups(x, first, inverse):
    # Every row maps to an equal row, and the chosen rows are all different.
    assert np.array_equal(x[first[inverse]], x)
    chosen = x[first].view(np.dtype((np.void, x.shape[1] * 4))).ravel()
    assert len(np.unique(chosen)) == len(first)


@pytest.mark.parametrize("chunk", [7, 65_536])
def test_matches_the_exact_byte_sort(chunk):
    x = _rows()
    first, inverse = kmeans._distinct_rows(x, chunk=chunk)
    _check_groups(x, first, inverse)
    assert len(first) == 500 - 1 - 50


def test_a_hash_collision_falls_back_to_the_exact_sort(monkeypatch):
    x = _rows()
    monkeypatch.setattr(
        kmeans, "_row_hashes", lambda x, chunk: np.zeros(len(x), dtype=np.uint64)
    )
    first, inverse = kmeans._distinct_rows(x)
    _check_groups(x, first, inverse)
    assert len(first) == 449

"""The comparison figure: a line per backbone against M, or grouped bars."""

import math

import pytest

from rekd_ray.sweep.compare import Comparison
from rekd_ray.sweep.plot import plot_comparison


def _setting(mean, **params):
    return {"params": params, "n": 3, "mean": mean, "low": mean - 1, "high": mean + 1}


@pytest.mark.parametrize(
    "settings",
    [
        [  # M varies: lines against M
            _setting(80.0, **{"relation.num_prototypes": "10"}),
            _setting(82.0, **{"relation.num_prototypes": "100"}),
        ],
        [  # backbone x method: bars per method grouped by backbone
            _setting(80.0, **{"student.backbone": "a", "method": "mocov2"}),
            _setting(83.0, **{"student.backbone": "a", "method": "rekd"}),
            {
                "params": {"student.backbone": "b", "method": "rekd"},
                "n": 1,
                "mean": 70.0,
                "low": math.nan,
                "high": math.nan,
            },
        ],
        [],  # nothing finished
    ],
)
def test_plot_writes_a_png(tmp_path, settings):
    comparison = Comparison("s", "p", "final/linear_top1", [], None, [], settings)
    path = plot_comparison(comparison, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

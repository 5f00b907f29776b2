"""``ProgressBoard``: a tiny actor the rank-0 worker posts progress to.

The driver polls it to draw a live progress bar; posting is fire-and-forget,
so a slow driver never slows training.
"""

from __future__ import annotations

import ray

__all__ = ["ProgressBoard"]


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Holds the latest progress dict (step, total_steps, loss, knn, ...)."""

    def __init__(self) -> None:
        self._latest: dict[str, float] = {}

    def post(self, progress: dict[str, float]) -> None:
        self._latest.update(progress)

    def read(self) -> dict[str, float]:
        return dict(self._latest)

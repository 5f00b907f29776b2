"""Running averages of named scalars, synchronized across workers on demand."""

from __future__ import annotations

from collections import defaultdict

from rekd_ray.training.distributed import SINGLE_PROCESS, Collectives

__all__ = ["MetricMeters"]


class MetricMeters:
    """Sample-weighted averages of every metric seen since the last reset.

    ``update({"loss": 1.2}, count=256)`` adds a batch; ``averages()`` returns
    the running mean per name; ``synced(collectives)`` the mean over workers
    (each worker's average weighted equally: workers see equal batch counts
    because pretraining drops the last partial batch).
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self.last: dict[str, float] = {}

    def update(self, metrics: dict[str, float], count: int = 1) -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        for name, value in metrics.items():
            self._sums[name] += float(value) * count
            self._counts[name] += count
            self.last[name] = float(value)

    def averages(self) -> dict[str, float]:
        return {name: self._sums[name] / self._counts[name] for name in self._sums}

    def synced(self, collectives: Collectives = SINGLE_PROCESS) -> dict[str, float]:
        """Averages over all workers; every worker must call it (a collective)."""
        return {
            name: collectives.mean(value)
            for name, value in sorted(self.averages().items())
        }

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()
        self.last.clear()

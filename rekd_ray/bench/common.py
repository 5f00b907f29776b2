"""What every benchmark shares: the result record, targets, timing, environment.

A benchmark's ``run(quick)`` returns a :class:`BenchResult`: its parameters,
its measurements, the :class:`Check` of each target (value, target, met) and
:class:`Table` s for the terminal. :func:`rekd_ray.bench.run_benchmark` adds
the environment and the wall time; :meth:`BenchResult.to_json` is what
``rekd bench --json`` prints and ``--out`` writes.

Timings on a shared machine are noisy (+-30 % between runs on the 2-core
development machine): every benchmark measures the things it compares side
by side, in one run, and records the load average it started under.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rekd_ray.paths import atomic_write

__all__ = [
    "BenchResult",
    "Check",
    "Stopwatch",
    "Table",
    "environment",
    "format_cell",
    "median_seconds",
    "timed",
    "write_json",
]


@dataclass(frozen=True)
class Check:
    """One measured value against its target.

    Attributes:
        name: what is measured, e.g. ``"images/s ratio, Ray / in process"``.
        value: the measurement.
        op: ``"<="`` or ``">="``: how ``value`` must compare to ``threshold``.
        threshold: the target.
        source: where the target comes from: ``"product"`` for rekd-ray's
            performance targets (README, Performance), ``"ours: ..."`` for a
            target set by the benchmark itself.
    """

    name: str
    value: float
    op: Literal["<=", ">="]
    threshold: float
    source: str = "product"

    @property
    def met(self) -> bool:
        if not math.isfinite(self.value):
            return False
        if self.op == "<=":
            return self.value <= self.threshold
        return self.value >= self.threshold

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "target": f"{self.op} {self.threshold:g}",
            "op": self.op,
            "threshold": self.threshold,
            "met": self.met,
            "source": self.source,
        }


@dataclass
class Table:
    """A table for the terminal: a title, column names, rows of strings."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append([format_cell(cell) for cell in cells])


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return "-" if value is None else str(value)


@dataclass
class BenchResult:
    """The outcome of one benchmark.

    Attributes:
        name: the benchmark (``overhead``, ``step``, ...).
        quick: whether the ``--quick`` sizes ran.
        params: the sizes and settings that ran.
        results: the measurements (JSON-serializable).
        checks: measurements against their targets.
        tables: what the terminal shows.
        notes: what limits the numbers, in a sentence each.
        environment: machine and versions, filled by the runner.
        started_at: UTC ISO time, filled by the runner.
        seconds: wall time of the whole benchmark, filled by the runner.
    """

    name: str
    quick: bool
    params: dict[str, Any]
    results: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "quick": self.quick,
            "started_at": self.started_at,
            "seconds": self.seconds,
            "environment": self.environment,
            "params": self.params,
            "results": self.results,
            "checks": [check.to_json() for check in self.checks],
            "targets_met": all(check.met for check in self.checks),
            "notes": self.notes,
        }


def write_json(result: BenchResult, path: str | Path) -> Path:
    """Write ``result.to_json()`` to ``path`` (parents created); returns it.

    Written atomically (:func:`rekd_ray.paths.atomic_write`): a crash never
    leaves half a JSON file.
    """
    text = json.dumps(result.to_json(), indent=2) + "\n"
    return atomic_write(Path(path), lambda handle: handle.write(text.encode()))


class Stopwatch:
    """Accumulates the seconds spent inside ``with stopwatch:`` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds += time.perf_counter() - self._start
        self.calls += 1


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    """``with timed() as t: ...`` then ``t["seconds"]``."""
    box = {"seconds": math.nan}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - start


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def environment() -> dict[str, Any]:
    """The machine and software a result was measured on."""
    import torch

    from rekd_ray import __version__
    from rekd_ray.clustering.faiss_import import faiss_gpu_count
    from rekd_ray.training.checkpoint import git_sha

    faiss = _version("faiss-cpu") or _version("faiss-gpu") or _version("faiss-gpu-cu12")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "gpu": _gpu(),
        "faiss_gpus": faiss_gpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            "rekd_ray": __version__,
            "torch": torch.__version__,
            "ray": _version("ray"),
            "faiss": faiss,
            "kornia": _version("kornia"),
            "scikit-learn": _version("scikit-learn"),
            "numpy": _version("numpy"),
        },
        "git_sha": git_sha(),
    }

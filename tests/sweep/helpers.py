"""Sweep files on tiny synthetic data, written into a test's directory."""

from __future__ import annotations

from pathlib import Path

import yaml

from rekd_ray.config import merge
from tests.conftest import TINY


def write_sweep(directory: Path, sweep: dict, **base_sections) -> Path:
    """Write ``base.yaml`` (TINY with overrides) and ``sweep.yaml``; return it."""
    base = merge(TINY, base_sections)
    (directory / "base.yaml").write_text(yaml.safe_dump(base))
    path = directory / "sweep.yaml"
    path.write_text(
        yaml.safe_dump({"name": "tiny_sweep", "base": "base.yaml", **sweep})
    )
    return path

"""Capture and restore every random generator a training process uses.

The loop re-seeds torch at the start of each epoch from (seed, epoch, rank),
so a resumed run draws the same augmentations as an uninterrupted one even
without this module. Restoring the generators as well covers anything drawn
outside that scope (a user's augmentation using numpy or ``random``, CUDA
kernels) and makes a checkpoint a complete snapshot.

The state is kept in plain containers and tensors so that a checkpoint still
loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng"]


def capture_rng() -> dict:
    """The torch (CPU and CUDA), numpy and Python generator states."""
    name, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gauss": float(cached_gauss),
        },
        "python": {
            "version": version,
            "state": torch.tensor(python_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Put back what :func:`capture_rng` returned (missing parts are skipped)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        numpy_state = state["numpy"]
        np.random.set_state(
            (
                numpy_state["name"],
                numpy_state["keys"].numpy().astype(np.uint32),
                numpy_state["position"],
                numpy_state["has_gauss"],
                numpy_state["cached_gauss"],
            )
        )
    if "python" in state:
        python_state = state["python"]
        random.setstate(
            (
                python_state["version"],
                tuple(int(value) for value in python_state["state"].tolist()),
                python_state["gauss_next"],
            )
        )
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])

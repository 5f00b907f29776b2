"""Training checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint is one ``checkpoint.pt`` holding plain containers and tensors
only, so it loads without unpickling code:

* ``config``: the resolved experiment config (JSON-like dict);
* ``epoch``: number of epochs completed (the next epoch to run);
* ``global_step``: optimizer steps taken (drives the learning-rate schedule);
* ``method``: the method's ``state_dict`` (student, momentum encoders, teacher,
  queues with their dataset indices and pointers);
* ``optimizers``: ``{group name: optimizer state_dict}``;
* ``prototype_version`` and ``assignments`` ((N,) int64 or None);
* ``relation``: the relation source's state (format 2): prototype version,
  assignments, prototypes and the teacher feature store's table, so that a
  resumed run clusters what the uninterrupted one would have;
* ``rng``: the torch CPU generator state; ``rng_all`` (format 2): torch,
  CUDA, numpy and Python generators (see :mod:`rekd_ray.training.rng`);
* ``git_sha``: the code version that wrote it;
* ``history``: the per-epoch metric dicts so far.

Ray Train stores one directory per epoch, ``<run dir>/epoch_<EEEE>`` (epochs
completed); :func:`find_latest_checkpoint` picks the newest one that loads.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import torch

from rekd_ray.paths import atomic_write

__all__ = [
    "CHECKPOINT_FILE",
    "checkpoint_dir_name",
    "find_latest_checkpoint",
    "git_sha",
    "load_checkpoint",
    "save_checkpoint",
    "save_state_dict",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 2
EPOCH_DIR_PREFIX = "epoch_"


def git_sha() -> str:
    """The current commit of the source tree, or ``"unknown"`` outside git."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _atomic_torch_save(obj: Any, path: Path) -> None:
    # A crash leaves the old file or the new one, never a torn one.
    atomic_write(path, lambda handle: torch.save(obj, handle))


def save_checkpoint(state: dict[str, Any], directory: str | Path) -> Path:
    """Write ``state`` as ``directory/checkpoint.pt`` atomically."""
    path = Path(directory) / CHECKPOINT_FILE
    _atomic_torch_save({"format_version": FORMAT_VERSION, **state}, path)
    logger.debug("checkpoint written: %s (epoch %s)", path, state.get("epoch"))
    return path


def save_state_dict(module: torch.nn.Module, path: str | Path) -> Path:
    """Save ``module.state_dict()`` atomically (readable with plain torch)."""
    path = Path(path)
    _atomic_torch_save(module.state_dict(), path)
    return path


def load_checkpoint(path: str | Path | None) -> dict[str, Any]:
    """Load a checkpoint file, or ``checkpoint.pt`` inside a directory.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: the file does not load, or is not a rekd-ray checkpoint.
    """
    if path is None:
        raise FileNotFoundError("no checkpoint path given")
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # EOFError, UnpicklingError, zip errors...
        raise ValueError(
            f"{path} does not load as a checkpoint ({type(error).__name__}: "
            f"{str(error)[:120] or 'empty or cut short'})"
        ) from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise ValueError(f"{path} is not a rekd-ray checkpoint")
    return state


def checkpoint_dir_name(epochs_done: int) -> str:
    """The directory name of the checkpoint taken after ``epochs_done`` epochs."""
    return f"{EPOCH_DIR_PREFIX}{epochs_done:04d}"


def find_latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict] | None:
    """The newest loadable checkpoint under ``run_dir`` and its contents.

    Directories are tried newest first (by the epoch in their name); one that
    does not load (a copy cut short by a crash) is skipped with a warning.
    Returns None when there is none.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    candidates = []
    for directory in run_dir.glob(f"{EPOCH_DIR_PREFIX}*"):
        suffix = directory.name.removeprefix(EPOCH_DIR_PREFIX)
        if suffix.isdigit() and (directory / CHECKPOINT_FILE).is_file():
            candidates.append((int(suffix), directory))
    for _, directory in sorted(candidates, reverse=True):
        try:
            return directory, load_checkpoint(directory)
        except Exception as error:  # torn or foreign file: try the older one
            logger.warning("skipping unreadable checkpoint %s: %s", directory, error)
    return None

"""Files the product writes: checked before any work starts, written whole.

A benchmark or a comparison that runs for minutes and only then finds that
its output cannot be written wastes the whole run; the checks let the
command refuse up front with one line naming the option. ``atomic_write``
writes beside the target and renames, so a crash never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from rekd_ray.config import ConfigError

__all__ = [
    "atomic_write",
    "check_output_dir",
    "check_output_file",
    "is_writable_dir",
]


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Create ``path`` (and its parents) with ``write(handle)``, atomically.

    The bytes go to a temporary file in the same directory, are flushed to
    disk, then renamed over ``path``: a crash leaves the old file or the new
    one, never a torn one, and the temporary file is removed on failure.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def is_writable_dir(directory: Path) -> bool:
    """Whether a file can be created in ``directory``.

    Tried for real with an anonymous temporary file (``O_TMPFILE`` on Linux:
    nothing shows up in the directory), since ``os.access`` says yes to root
    even on read-only mounts and /proc.
    """
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError:
        return False
    return True


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: Path, option: str) -> None:
    """``path`` is, or can be created as, a directory files can be written in
    (missing directories are created when the first file is written).

    Raises:
        ConfigError: one line naming ``option`` and the fix.
    """
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise ConfigError(
            f"{option}: {existing} is a file, not a directory; choose another path"
        )
    if not is_writable_dir(existing):
        raise ConfigError(
            f"{option}: directory {existing} is not writable; choose another path"
        )


def check_output_file(path: Path, option: str, suffix: str | None = None) -> None:
    """``path`` can be written as a file: not a directory, and under a
    writable directory (missing directories between them are created later).

    Args:
        option: the option named in the error, e.g. ``--out``.
        suffix: the required file suffix, e.g. ``.png`` (case-insensitive).

    Raises:
        ConfigError: one line naming ``option`` and the fix.
    """
    if path.is_dir():
        name = f"result{suffix or '.json'}"
        raise ConfigError(
            f"{option}: {path} is a directory; give a file such as {path / name}"
        )
    if suffix and path.suffix.lower() != suffix:
        raise ConfigError(
            f"{option}: {path} must end in {suffix}, e.g. {path.with_suffix(suffix)}"
        )
    check_output_dir(path.parent, option)
    if path.exists() and not path.is_file():
        raise ConfigError(f"{option}: {path} exists and is not a regular file")

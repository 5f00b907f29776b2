"""Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist``.

The package installs the four gzipped IDX files under
``/usr/share/datasets/fashion-mnist``. We read them with a small validating
IDX parser (magic number, dimensions and byte length), so a truncated or
corrupt file fails with :class:`DatasetMissingError` naming the fix instead
of a reshape error deep inside numpy.

Shape legend: N samples, H = W = 28 pixels.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DEBIAN_PACKAGE",
    "DEFAULT_ROOT",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "DatasetMissingError",
    "check_fashion_mnist",
    "load_fashion_mnist",
]

logger = logging.getLogger(__name__)

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

# Computed once over all 60000 * 28 * 28 train pixels scaled to [0, 1]:
#   images = load_fashion_mnist(split="train")[0].double() / 255
#   images.mean(), images.std()  ->  0.286041, 0.353024
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 0x00000803  # unsigned byte data, 3 dims
_LABELS_MAGIC = 0x00000801  # unsigned byte data, 1 dim


class DatasetMissingError(FileNotFoundError):
    """A dataset file is absent, truncated or corrupt; the message says the fix."""


def _missing(path: Path, problem: str) -> DatasetMissingError:
    return DatasetMissingError(
        f"{path} {problem}; it comes from the Debian package {DEBIAN_PACKAGE}: "
        f"run `apt-get install {DEBIAN_PACKAGE}` (or `apt-get install --reinstall "
        f"{DEBIAN_PACKAGE}` if the file is truncated or corrupt), or point "
        "data.root at a directory holding the IDX files"
    )


def _find_file(root: Path, stem: str) -> Path:
    """Return ``root/stem.gz`` or, failing that, the uncompressed ``root/stem``."""
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise _missing(root / f"{stem}.gz", "is missing (no gzipped or raw IDX file)")


def _read_bytes(path: Path, size: int = -1) -> bytes:
    """The (decompressed) bytes of ``path``: all of them, or the first ``size``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read(size)
        with path.open("rb") as f:
            return f.read(size)
    except (EOFError, OSError, zlib.error) as err:
        raise _missing(path, f"cannot be read ({err})") from err


def _parse_header(path: Path, data: bytes, magic: int, ndim: int) -> tuple[int, ...]:
    """The dimensions in the IDX header at the start of ``data``.

    Raises:
        DatasetMissingError: no complete header, or the wrong magic.
    """
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise _missing(path, f"is truncated ({len(data)} bytes, no IDX header)")
    (found_magic,) = struct.unpack(">I", data[:4])
    if found_magic != magic:
        raise _missing(path, f"has IDX magic {found_magic:#010x}, want {magic:#010x}")
    return struct.unpack(f">{ndim}I", data[4:header_len])


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse one IDX file, checking magic, dimensions and byte length.

    Args:
        path: gzipped or raw IDX file.
        magic: expected 4-byte magic (0x0803 images, 0x0801 labels).
        ndim: expected number of dimensions (3 images, 1 labels).

    Returns:
        uint8 array. Shape: (N, H, W) for images, (N,) for labels.

    Raises:
        DatasetMissingError: bad magic, bad header or wrong byte length.
    """
    data = _read_bytes(path)
    dims = _parse_header(path, data, magic, ndim)
    header_len = 4 + 4 * ndim
    expected = header_len + int(np.prod(dims))
    if len(data) != expected:
        raise _missing(
            path, f"has {len(data)} bytes, want {expected} for IDX dims {dims}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def _recorded_length(path: Path) -> int:
    """The IDX byte length ``path`` holds without decompressing it: the file
    size, or for gzip the size its trailer records (modulo 2**32)."""
    try:
        if path.suffix != ".gz":
            return path.stat().st_size
        with path.open("rb") as f:
            f.seek(-4, 2)  # ISIZE, the last field of a gzip member
            return struct.unpack("<I", f.read(4))[0]
    except OSError as err:
        raise _missing(path, f"cannot be read ({err})") from err


def load_fashion_mnist(
    root: str | Path = DEFAULT_ROOT, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one Fashion-MNIST split into memory.

    Args:
        root: directory with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        split: ``"train"`` (60000 samples) or ``"test"`` (10000 samples).

    Returns:
        ``(images, labels)``: uint8 images and int64 labels in 0..9.
        Shape: images (N, 28, 28), labels (N,).

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
        DatasetMissingError: a file is missing, truncated or corrupt, or the
            image and label counts disagree.
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be one of {sorted(_SPLIT_PREFIX)}, got {split!r}")
    root = Path(root)
    prefix = _SPLIT_PREFIX[split]
    images_path = _find_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_file(root, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(images_path, _IMAGES_MAGIC, ndim=3)
    labels = _read_idx(labels_path, _LABELS_MAGIC, ndim=1)
    if len(images) != len(labels):
        raise _missing(
            labels_path, f"has {len(labels)} labels for {len(images)} images"
        )
    logger.debug("loaded fashion-mnist %s: %d images from %s", split, len(images), root)
    # NOTE: copy out of the read-only bytes buffer so callers may write in place.
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def check_fashion_mnist(root: str | Path = DEFAULT_ROOT) -> None:
    """Check the four IDX files of ``root`` without loading them.

    Meant for up-front checks before a run starts: each file's header (magic,
    dimensions) is read, and the length it implies is compared with the
    file's size (for gzip, the size its trailer records), so a missing or
    truncated file is reported before any worker is created. A file
    corrupted in the middle passes and fails at load, with the same error.

    Raises:
        DatasetMissingError: a file is missing, truncated or has a bad header,
            or a split's image and label counts differ.
    """
    root = Path(root)
    for prefix in _SPLIT_PREFIX.values():
        counts = []
        for stem, magic, ndim in (
            (f"{prefix}-images-idx3-ubyte", _IMAGES_MAGIC, 3),
            (f"{prefix}-labels-idx1-ubyte", _LABELS_MAGIC, 1),
        ):
            path = _find_file(root, stem)
            header_len = 4 + 4 * ndim
            dims = _parse_header(path, _read_bytes(path, header_len), magic, ndim)
            expected = header_len + int(np.prod(dims))
            recorded = _recorded_length(path)
            if recorded != (expected % 2**32 if path.suffix == ".gz" else expected):
                raise _missing(
                    path,
                    f"is truncated (holds {recorded} bytes, its IDX header "
                    f"{dims} needs {expected})",
                )
            counts.append(dims[0])
        if counts[0] != counts[1]:
            raise _missing(path, f"has {counts[1]} labels for {counts[0]} images")

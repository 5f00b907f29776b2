"""IDX reader on tiny hand-written files, plus the real Fashion-MNIST."""

import gzip
import struct
from pathlib import Path

import pytest
import torch

from rekd_ray.data.fashion_mnist import (
    DEFAULT_ROOT,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    DatasetMissingError,
    check_fashion_mnist,
    load_fashion_mnist,
)


def _write_idx(root: Path, images: torch.Tensor, labels: torch.Tensor, gz: bool):
    n, h, w = images.shape
    files = {
        "t10k-images-idx3-ubyte": struct.pack(">IIII", 0x803, n, h, w)
        + images.numpy().tobytes(),
        "t10k-labels-idx1-ubyte": struct.pack(">II", 0x801, n)
        + labels.to(torch.uint8).numpy().tobytes(),
    }
    for name, data in files.items():
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)


TINY_IMAGES = torch.arange(3 * 4 * 5, dtype=torch.uint8).view(3, 4, 5)
TINY_LABELS = torch.tensor([7, 0, 9])


@pytest.mark.parametrize("gz", [True, False])
def test_reads_tiny_idx(tmp_path, gz):
    _write_idx(tmp_path, TINY_IMAGES, TINY_LABELS, gz)
    images, labels = load_fashion_mnist(tmp_path, split="test")
    assert images.dtype == torch.uint8 and images.shape == (3, 4, 5)
    assert labels.dtype == torch.int64 and labels.tolist() == [7, 0, 9]
    assert torch.equal(images, TINY_IMAGES)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file_raises(tmp_path, gz):
    _write_idx(tmp_path, TINY_IMAGES, TINY_LABELS, gz)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) - 7])
    with pytest.raises(DatasetMissingError, match="dataset-fashion-mnist") as err:
        load_fashion_mnist(tmp_path, split="test")
    assert "--reinstall" in str(err.value) and "data.root" in str(err.value)


def test_bad_magic_raises(tmp_path):
    _write_idx(tmp_path, TINY_IMAGES, TINY_LABELS, gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">I", 0x803) + path.read_bytes()[4:])
    with pytest.raises(DatasetMissingError, match="magic"):
        load_fashion_mnist(tmp_path, split="test")


def test_missing_file_raises(tmp_path):
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion"):
        load_fashion_mnist(tmp_path, split="train")
    assert issubclass(DatasetMissingError, FileNotFoundError)


def test_bad_split_raises(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        load_fashion_mnist(tmp_path, split="val")


@pytest.mark.slow
@pytest.mark.skipif(not Path(DEFAULT_ROOT).is_dir(), reason="no Fashion-MNIST")
def test_real_fashion_mnist():
    images, labels = load_fashion_mnist(split="train")
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(labels.bincount(), torch.full((10,), 6000))
    pixels = images.double() / 255
    assert abs(pixels.mean().item() - FASHION_MNIST_MEAN) < 1e-3
    assert abs(pixels.std().item() - FASHION_MNIST_STD) < 1e-3
    test_images, test_labels = load_fashion_mnist(split="test")
    assert test_images.shape == (10000, 28, 28)
    assert test_labels.min() == 0 and test_labels.max() == 9


def _write_both_splits(root: Path, gz: bool) -> None:
    _write_idx(root, TINY_IMAGES, TINY_LABELS, gz)
    for path in list(root.iterdir()):
        path.with_name(path.name.replace("t10k", "train")).write_bytes(
            path.read_bytes()
        )


@pytest.mark.parametrize("gz", [True, False])
def test_check_passes_whole_files(tmp_path, gz):
    _write_both_splits(tmp_path, gz)
    check_fashion_mnist(tmp_path)  # no error


@pytest.mark.parametrize("gz", [True, False])
def test_check_finds_a_truncated_file_without_loading(tmp_path, gz):
    _write_both_splits(tmp_path, gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    whole = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(whole[: len(whole) - 7])
    with pytest.raises(DatasetMissingError, match=f"{name} is truncated"):
        check_fashion_mnist(tmp_path)


def test_check_finds_a_missing_file(tmp_path):
    _write_both_splits(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetMissingError, match="dataset-fashion-mnist"):
        check_fashion_mnist(tmp_path)


@pytest.mark.skipif(not Path(DEFAULT_ROOT).is_dir(), reason="needs the package")
def test_check_passes_the_real_files():
    check_fashion_mnist(DEFAULT_ROOT)

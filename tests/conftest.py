"""Shared fixtures: tiny MNIST-like IDX files, an isolated cache, Flower task identity."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from alphafed_flwr.api.env import set_environment
from alphafed_flwr.datasets import write_mnist_raw

sys.path.insert(0, str(Path(__file__).parent))  # helpers such as fakegrid


def make_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """28x28 uint8 images whose class is easy to learn: a bright bar at a label-given row."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row = 2 + int(label) * 2
        images[i, row : row + 2, 4:24] = 220
        images[i, 4:24, 2 + int(label) * 2] = 180
    return images


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-layout MNIST folder with 240 training and 100 test images."""
    root = tmp_path_factory.mktemp("tiny-mnist")
    rng = np.random.default_rng(0)
    train_labels = rng.integers(0, 10, size=240).astype(np.uint8)
    test_labels = rng.integers(0, 10, size=100).astype(np.uint8)
    return write_mnist_raw(
        root, make_images(train_labels, 1), train_labels, make_images(test_labels, 2), test_labels
    )


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches ~/.cache; Flower's task identity is set for Message()."""
    monkeypatch.setenv("ALPHAFED_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ALPHAFED_DATA_DIR", raising=False)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    set_environment(None)


@pytest.fixture
def caplog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """pytest's ``caplog``, also fed by the non-propagating ``alphafed`` logger.

    pytest >= 9.2 attaches its handler to non-propagating loggers itself; older releases (which a
    machine may already have installed) do not, so attach it here for every version.
    """
    alphafed = logging.getLogger("alphafed")
    attached = caplog.handler not in alphafed.handlers
    if attached:
        alphafed.addHandler(caplog.handler)
    yield caplog
    if attached:
        alphafed.removeHandler(caplog.handler)

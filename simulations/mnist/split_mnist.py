"""Shared pieces of the vertical MNIST example: each image is split down the middle; the
host holds the left half and the labels, the collaborator the right half.

Model choice: the AlphaFed tutorial's split model (a dropout-heavy "half ConvNet" with an
80-wide bottleneck, SGD lr 0.01) learns slowly on a 5,000-image training set. Here each
party's feature model is a small two-layer CNN without dropout ending in 64 features, and
the host's infer model is one linear layer over both parties' 128 features; Adam (lr 1e-3)
trains it to ~97% in 20 epochs, and a centralized run of the same split model in one
process (``bench/vertical_mnist.py``) reaches the same accuracy.
"""

from __future__ import annotations

import functools
import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from alphafed import get_dataset_dir
from mnist_common import mnist

TEST_ID_OFFSET = 100_000  # test sample i has ID str(100000 + i), as in the AlphaFed tutorial


class HalfConvNet(nn.Module):
    """Feature model over one half (28 x 14) of an MNIST image: 64 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc = nn.Linear(32 * 7 * 3, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))


class InferModel(nn.Module):
    """The host's infer model over the concatenated features of both parties."""

    def __init__(self, width: int = 128) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc(x), dim=-1)


@functools.lru_cache(maxsize=4)
def mnist_tensors(data_dir: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as normalised image and label tensors (loaded once per process)."""
    dataset = mnist(data_dir, train)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return images, torch.as_tensor(dataset.targets)


def load(task_id: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """This party's MNIST split (``get_dataset_dir``)."""
    return mnist_tensors(get_dataset_dir(task_id), train)


def local_ids(task_id: str, first_train: int, num_train: int | None, num_test: int | None) -> list[str]:
    """This party's IDs: training samples from ``first_train`` on, then test samples."""
    train, _ = load(task_id, train=True)
    test, _ = load(task_id, train=False)
    stop = min(first_train + (num_train or len(train)), len(train))
    return [str(i) for i in range(first_train, stop)] + [
        str(TEST_ID_OFFSET + i) for i in range(min(num_test or len(test), len(test)))
    ]


def split_ids(id_intersection: set) -> tuple[set, set]:
    """Training IDs are below ``TEST_ID_OFFSET``; returns sets of ints (as the tutorial)."""
    ids = {int(i) for i in id_intersection}
    return {i for i in ids if i < TEST_ID_OFFSET}, {i for i in ids if i >= TEST_ID_OFFSET}


def round_order(ids: set, current_round: int) -> list[int]:
    """The same shuffled order of the training IDs on every party, new in every round."""
    return sorted(ids, key=lambda i: hashlib.sha256(f"{current_round}:{i}".encode()).digest())


def batches(ids: list[int], batch_size: int):
    """Consecutive slices of ``ids``."""
    for start in range(0, len(ids), batch_size):
        yield ids[start : start + batch_size]

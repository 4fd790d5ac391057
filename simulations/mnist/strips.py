"""Shared pieces of the three-party vertical MNIST example: each image is cut into three
column strips; the host holds the left strip (columns 0-9) and the labels, collaborator
"middle" columns 10-18, collaborator "right" columns 19-27.

Each party's feature model is a small CNN over its strip ending in 64 features; the host's
infer model is one linear layer over the 192 features. Models are initialized from a seed
of the party's key, so that ``bench/vertical_parties.py`` can train the same model
centrally from the same weights. IDs, batches and the per-round order are those of the
two-party example (``split_mnist``).
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from split_mnist import TEST_ID_OFFSET, batches, load, local_ids, round_order, split_ids
from torch import nn, optim

from alphafed.hetero_nn import HeteroNNCollaboratorScheduler

STRIPS = {"host": (0, 10), "middle": (10, 19), "right": (19, 28)}


class StripConvNet(nn.Module):
    """Feature model over one strip (28 x width) of an MNIST image: 64 features."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc = nn.Linear(32 * 7 * (width // 4), 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))


def strip_model(key: str) -> StripConvNet:
    """The feature model of strip ``key``, initialized from a seed of the key."""
    torch.manual_seed(int.from_bytes(hashlib.sha256(f"strip:{key}".encode()).digest()[:4], "big"))
    first, stop = STRIPS[key]
    return StripConvNet(stop - first)


def strip(images: torch.Tensor, key: str) -> torch.Tensor:
    """Strip ``key`` of a batch of images."""
    first, stop = STRIPS[key]
    return images[:, :, :, first:stop]


class StripCollaborator(HeteroNNCollaboratorScheduler):
    """One strip of each image, no labels (``feature_key``: "middle" or "right")."""

    def __init__(
        self, feature_key: str, batch_size: int = 128, num_train: int | None = None,
        num_test: int | None = None, schedule_timeout: int = 120,
    ) -> None:
        super().__init__(feature_key=feature_key, schedule_timeout=schedule_timeout)
        self.batch_size = batch_size
        self.num_train = num_train
        self.num_test = num_test

    def load_local_ids(self) -> list[str]:
        return local_ids(self.task_id, 0, self.num_train, self.num_test)

    def split_dataset(self, id_intersection: set) -> tuple[set, set]:
        return split_ids(id_intersection)

    def build_feature_model(self) -> nn.Module:
        return strip_model(self.feature_key)

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return optim.Adam(feature_model.parameters(), lr=1e-3)

    def iterate_train_feature(self, feature_model: nn.Module, train_ids: set):
        images, _ = load(self.task_id, train=True)
        for ids in batches(round_order(train_ids, self.current_round), self.batch_size):
            yield feature_model(strip(images[torch.tensor(ids)], self.feature_key)), ids

    def iterate_test_feature(self, feature_model: nn.Module, test_ids: set):
        images, _ = load(self.task_id, train=False)
        for ids in batches(sorted(test_ids), 1000):
            yield feature_model(strip(images[torch.tensor(ids) - TEST_ID_OFFSET], self.feature_key)), ids

"""The plain-protocol twin of the secure vertical MNIST example, for ``bench/secure_vertical.py``:
the same feature and infer models, optimizers, batches and 20 -> 20 projections, but the
collaborator's features reach the host in the clear and the host projects them itself
(SGD with the same learning rate). Objects: ``host`` and ``collaborator``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations" / "mnist"))

from secure_mnist import FEATURES, PROJECT_LR, HalfNet20, Infer40  # noqa: E402
from split_mnist import TEST_ID_OFFSET, batches, load, local_ids, round_order, split_ids  # noqa: E402
from torch import optim  # noqa: E402

from alphafed.hetero_nn import HeteroNNCollaboratorScheduler, HeteroNNHostScheduler  # noqa: E402


class _Party:
    """Data and feature model of either party (as in ``simulations/mnist/secure_vertical_*.py``)."""

    task_id: str
    current_round: int
    batch_size, num_train, num_test = 128, None, None
    columns = slice(None)

    def load_local_ids(self) -> list[str]:
        return local_ids(self.task_id, 0, self.num_train, self.num_test)

    def split_dataset(self, id_intersection: set) -> tuple[set, set]:
        return split_ids(id_intersection)

    def build_feature_model(self) -> nn.Module:
        return HalfNet20()

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return optim.Adam(feature_model.parameters(), lr=1e-3)

    def _batches(self, feature_model: nn.Module, ids: list[int], train: bool, size: int):  # noqa: ANN202
        images, labels = load(self.task_id, train=train)
        for batch in batches(ids, size):
            index = torch.tensor(batch) - (0 if train else TEST_ID_OFFSET)
            yield feature_model(images[index, :, :, self.columns]), labels[index], batch


class PlainMnistHost(_Party, HeteroNNHostScheduler):
    """The secure example's host task on the plain protocol, projections in the host's code."""

    columns = slice(None, 14)

    def build_infer_model(self) -> nn.Module:
        return Infer40()

    def build_infer_optimizer(self, infer_model: nn.Module) -> optim.Optimizer:
        return optim.Adam(infer_model.parameters(), lr=1e-3)

    def iterate_train_feature(self, feature_model: nn.Module, train_ids: set):  # noqa: ANN201
        return self._batches(feature_model, round_order(train_ids, self.current_round), True, self.batch_size)

    def iterate_test_feature(self, feature_model: nn.Module, test_ids: set):  # noqa: ANN201
        return self._batches(feature_model, sorted(test_ids), False, 1000)

    def __init__(self) -> None:
        super().__init__(feature_key="host", max_rounds=5, log_rounds=5, schedule_timeout=120)
        self.projections = nn.ModuleDict({k: nn.Linear(FEATURES, FEATURES, bias=False) for k in ("host", "collaborator")})
        self.project_sgd = torch.optim.SGD(self.projections.parameters(), lr=PROJECT_LR)

    def _fused(self, features: dict) -> torch.Tensor:
        return torch.cat([self.projections[k](features[k]) for k in ("host", "collaborator")], dim=1)

    def train_a_batch(self, feature_projection: dict, labels: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        self.project_sgd.zero_grad()
        F.nll_loss(self.infer_model(self._fused(feature_projection)), labels).backward()
        self.optimizer.step()
        self.project_sgd.step()

    def test(self, batched_feature_projections: list, batched_labels: list) -> dict:
        correct = total = 0
        for features, labels in zip(batched_feature_projections, batched_labels, strict=True):
            correct += (self.infer_model(self._fused(features)).argmax(1) == labels).sum().item()
            total += len(labels)
        return {"accuracy": correct / total}


class PlainMnistCollaborator(_Party, HeteroNNCollaboratorScheduler):
    """The secure example's collaborator task on the plain protocol."""

    columns = slice(14, None)

    def __init__(self) -> None:
        super().__init__(feature_key="collaborator", schedule_timeout=120)

    def iterate_train_feature(self, feature_model: nn.Module, train_ids: set):  # noqa: ANN201
        for features, _, ids in self._batches(feature_model, round_order(train_ids, self.current_round), True, self.batch_size):
            yield features, ids

    def iterate_test_feature(self, feature_model: nn.Module, test_ids: set):  # noqa: ANN201
        for features, _, ids in self._batches(feature_model, sorted(test_ids), False, 1000):
            yield features, ids


host = PlainMnistHost()
collaborator = PlainMnistCollaborator()

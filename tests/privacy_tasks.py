"""Small synthetic DP and secure tasks for the privacy tests (no data files, no Ray)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

from alphafed_flwr.api import register_metrics
from alphafed_flwr.api.dp_fed_avg import DPFedAvgScheduler
from alphafed_flwr.api.secure_fed_avg import SecureFedAvgScheduler


def _data(seed: int, n: int = 64) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    return TensorDataset(x, (x[:, 0] > 0).long())


class _Common:
    """build_* and test for a 4-feature, 2-class linear model."""

    def build_model(self) -> nn.Module:
        return nn.Linear(4, 2)

    def build_optimizer(self, model: nn.Module) -> optim.Optimizer:
        return optim.SGD(model.parameters(), lr=0.5)

    def build_train_dataloader(self) -> DataLoader:
        return DataLoader(_data(1), batch_size=16, shuffle=False)

    def build_test_dataloader(self) -> DataLoader:
        return DataLoader(_data(2), batch_size=64)

    @register_metrics(name="test_results", keys=["accuracy"])
    def test(self) -> None:
        x, y = next(iter(self.test_loader))
        with torch.no_grad():
            accuracy = float((self.model(x).argmax(1) == y).float().mean())
        self.get_metrics("test_results").append_metrics_item({"accuracy": accuracy})


class TinyDP(_Common, DPFedAvgScheduler):
    """DP-FedAvg: the user writes train_a_batch only."""

    def train_a_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        F.cross_entropy(self.model(x), y).backward()
        self.optimizer.step()


class TinySecure(_Common, SecureFedAvgScheduler):
    """FedAvg under SecAgg+."""

    def train_an_epoch(self) -> None:
        for x, y in self.train_loader:
            self.optimizer.zero_grad()
            F.cross_entropy(self.model(x), y).backward()
            self.optimizer.step()

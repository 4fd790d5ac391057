"""The task of ``bench/scale.py``: a linear model on flattened MNIST, 10 clients a round."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn, optim
from torch.utils.data import DataLoader

from alphafed import get_dataset_dir
from alphafed.fed_avg import FedAvgScheduler, register_metrics

FLAT = torchvision.transforms.Compose([torchvision.transforms.ToTensor(), torch.flatten])


class ScaleTask(FedAvgScheduler):
    """A small model: one linear layer, a few samples per client."""

    def build_model(self) -> nn.Module:
        return nn.Linear(784, 10)

    def build_optimizer(self, model: nn.Module) -> optim.Optimizer:
        return optim.SGD(model.parameters(), lr=0.1)

    def build_train_dataloader(self) -> DataLoader:
        data = torchvision.datasets.MNIST(get_dataset_dir(self.task_id), train=True, transform=FLAT)
        return DataLoader(data, batch_size=32, shuffle=True)

    def build_test_dataloader(self) -> DataLoader:
        data = torchvision.datasets.MNIST(get_dataset_dir(self.task_id), train=False, transform=FLAT)
        return DataLoader(data, batch_size=2000)

    def train_an_epoch(self) -> None:
        for data, labels in self.train_loader:
            self.optimizer.zero_grad()
            F.cross_entropy(self.model(data), labels).backward()
            self.optimizer.step()

    @register_metrics(name="test_results", keys=["accuracy"])
    def test(self) -> None:
        with torch.no_grad():
            correct = sum((self.model(x).argmax(1) == y).sum().item() for x, y in self.test_loader)
        self.get_metrics("test_results").append_metrics_item({"accuracy": correct / len(self.test_loader.dataset)})


scheduler = ScaleTask(min_clients=10, max_clients=10, max_rounds=5)

"""FedProx on MNIST: the FedAvg example with the proximal term in the local loss.

Run it under Flower's FedProx strategy, which sends ``proximal-mu`` to the clients (it
replaces the task's ``mu``), on a strongly non-IID split (from the repository root):

    python -m alphafed_flwr.simulation --config configs/fedprox_mnist_dirichlet.toml

Compare with ``configs/fedavg_mnist_dirichlet01.toml`` and ``configs/fedadam_mnist_dirichlet.toml``
(same split and seeds), or run all strategies side by side with ``python bench/strategies.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mnist_common import MnistTask, mnist
from torch.utils.data import DataLoader

from alphafed.fed_prox import FedProxScheduler


class MnistFedProx(MnistTask, FedProxScheduler):
    """The tutorial CNN; each local step minimises nll + (mu/2)||w - w_global||^2."""

    def __init__(self, max_rounds: int = 20, log_rounds: int = 1, mu: float = 0.1,
                 batch_size: int = 64, learning_rate: float = 0.05, momentum: float = 0.5) -> None:
        super().__init__(max_rounds=max_rounds, log_rounds=log_rounds, mu=mu)
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum

    def build_train_dataloader(self) -> DataLoader:
        return DataLoader(mnist(self.task_id, train=True), batch_size=self.batch_size, shuffle=True)

    def train_an_epoch(self) -> None:
        self.model.train()
        for data, labels in self.train_loader:
            self.optimizer.zero_grad()
            self.calc_prox_loss(F.nll_loss, self.model(data), labels).backward()
            self.optimizer.step()


torch.manual_seed(42)
scheduler = MnistFedProx()
scheduler.launch_task(task_id="fedprox-mnist")

"""FedAvg under secure aggregation on MNIST (SecureFedAvgScheduler, Flower's SecAgg+).

    python -m alphafed_flwr.simulation simulations/mnist/secure_fedavg.py --num-clients 3 \\
        --rounds 5 --data-dir ../shared/data

The server unmasks only the weighted sum of the clients' updates; up to n - t of the n
sampled clients may drop out mid-round. Hyperparameters are the FedAvg example's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mnist_common import MnistTask, mnist
from torch.utils.data import DataLoader

from alphafed.fed_avg import SecureFedAvgScheduler


class MnistSecureFedAvg(MnistTask, SecureFedAvgScheduler):
    """The tutorial CNN trained with FedAvg under SecAgg+ (threshold t)."""

    def __init__(
        self,
        t: int = 2,
        max_rounds: int = 5,
        log_rounds: int = 1,
        calculation_timeout: int = 300,
        batch_size: int = 64,
        learning_rate: float = 0.05,
        momentum: float = 0.5,
    ) -> None:
        super().__init__(t=t, max_rounds=max_rounds, log_rounds=log_rounds,
                         calculation_timeout=calculation_timeout)
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum

    def build_train_dataloader(self) -> DataLoader:
        return DataLoader(mnist(self.task_id, train=True), batch_size=self.batch_size, shuffle=True)

    def train_an_epoch(self) -> None:
        self.model.train()
        for data, labels in self.train_loader:
            self.optimizer.zero_grad()
            F.nll_loss(self.model(data), labels).backward()
            self.optimizer.step()


torch.manual_seed(42)
scheduler = MnistSecureFedAvg()
scheduler.launch_task(task_id="secure-fedavg-mnist")

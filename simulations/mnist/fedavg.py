"""FedAvg on MNIST: the AlphaFed tutorial task, written as a tutorial-style script.

Run it in a simulation with 3 virtual clients (from the repository root):

    python -m alphafed_flwr.simulation simulations/mnist/fedavg.py --num-clients 3 --rounds 20

or directly (``python simulations/mnist/fedavg.py``): ``launch_task`` then starts a local
simulation. Hyperparameters: the tutorial's SGD (momentum 0.5, batch 64) with lr 0.05
instead of 0.01, which learns much faster in 20 rounds of one local epoch each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mnist_common import MnistTask, mnist
from torch.utils.data import DataLoader

from alphafed.fed_avg import FedAvgScheduler


class MnistFedAvg(MnistTask, FedAvgScheduler):
    """The tutorial CNN trained with FedAvg."""

    def __init__(
        self,
        min_clients: int = 1,
        max_clients: int | None = None,
        max_rounds: int = 20,
        merge_epochs: int = 1,
        log_rounds: int = 1,
        calculation_timeout: int = 300,
        batch_size: int = 64,
        learning_rate: float = 0.05,
        momentum: float = 0.5,
    ) -> None:
        super().__init__(
            min_clients=min_clients,
            max_clients=max_clients,
            max_rounds=max_rounds,
            merge_epochs=merge_epochs,
            log_rounds=log_rounds,
            calculation_timeout=calculation_timeout,
        )
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
scheduler = MnistFedAvg()
scheduler.launch_task(task_id="fedavg-mnist")

"""Differentially private FedAvg on MNIST (DPFedAvgScheduler, central DP).

    python -m alphafed_flwr.simulation simulations/mnist/dp_fedavg.py --num-clients 10 \\
        --rounds 10 --data-dir ../shared/data [--target-epsilon 50]

Each round the server clips every client's update to L2 norm S, averages them with equal
weights, adds Gaussian noise of std z*S/m and reports the (epsilon, delta) spent so far
(``metrics/privacy.csv``, TensorBoard, the progress line, ``summary.json``). With 10
clients the noise that a small epsilon needs drowns the updates (see ``bench/privacy.py``):
central DP pays off with hundreds of clients per round.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mnist_common import MnistTask, mnist
from torch.utils.data import DataLoader

from alphafed.fed_avg import DPFedAvgScheduler


class MnistDPFedAvg(MnistTask, DPFedAvgScheduler):
    """The tutorial CNN under DP-FedAvg; the user writes ``train_a_batch`` only."""

    def __init__(
        self,
        w_cap: int = 1000,
        q: float = 1.0,
        S: float = 1.0,  # noqa: N803 - AlphaFed's parameter names
        z: float = 0.05,
        max_rounds: int = 10,
        log_rounds: int = 1,
        delta: float = 1e-5,
        batch_size: int = 64,
        learning_rate: float = 0.05,
        momentum: float = 0.5,
    ) -> None:
        super().__init__(w_cap=w_cap, q=q, S=S, z=z, max_rounds=max_rounds, log_rounds=log_rounds,
                         delta=delta)
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum

    def build_train_dataloader(self) -> DataLoader:
        return DataLoader(mnist(self.task_id, train=True), batch_size=self.batch_size, shuffle=True)

    def train_a_batch(self, data: torch.Tensor, labels: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        F.nll_loss(self.model(data), labels).backward()
        self.optimizer.step()


torch.manual_seed(42)
scheduler = MnistDPFedAvg()
scheduler.launch_task(task_id="dp-fedavg-mnist")

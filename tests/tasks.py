"""Task files written by the tests (tutorial style: ``from alphafed ...`` and ``launch_task``)."""

from __future__ import annotations

from pathlib import Path

FEDAVG = '''
import torch
import torch.nn.functional as F
import torchvision
from torch import nn, optim
from torch.utils.data import DataLoader

from alphafed import get_dataset_dir, logger
from alphafed.fed_avg import {base}, register_metrics

TRANSFORM = torchvision.transforms.Compose(
    [torchvision.transforms.ToTensor(), torchvision.transforms.Normalize((0.1307,), (0.3081,))]
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 12 * 12, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return F.log_softmax(self.fc(x.flatten(1)), dim=-1)


class TinyTask({base}):
    def __init__(self, batch_size={batch_size}, **kwargs):
        super().__init__(**kwargs)
        self.batch_size = batch_size

    def build_model(self):
        return Net()

    def build_optimizer(self, model):
        return optim.SGD(model.parameters(), lr=0.1, momentum=0.5)

    def build_train_dataloader(self):
        data = torchvision.datasets.MNIST(get_dataset_dir(self.task_id), train=True, transform=TRANSFORM)
        return DataLoader(data, batch_size=self.batch_size or len(data), shuffle=True)

    def build_test_dataloader(self):
        data = torchvision.datasets.MNIST(get_dataset_dir(self.task_id), train=False, transform=TRANSFORM)
        return DataLoader(data, batch_size=50)

    def train_an_epoch(self):
        self.model.train()
        for data, labels in self.train_loader:
            self.optimizer.zero_grad()
            F.nll_loss(self.model(data), labels).backward()
            self.optimizer.step()

    @register_metrics(name="test_results", keys=["loss", "accuracy"])
    def run_test(self):
        self.model.eval()
        loss, correct = 0.0, 0
        with torch.no_grad():
            for data, labels in self.test_loader:
                out = self.model(data)
                loss += F.nll_loss(out, labels, reduction="sum").item()
                correct += (out.argmax(1) == labels).sum().item()
        n = len(self.test_loader.dataset)
        logger.info("round %d accuracy %.3f", self.current_round, correct / n)
        self.tb_writer.add_scalar("test/accuracy", correct / n, self.current_round)
        self.get_metrics("test_results").append_metrics_item({{"loss": loss / n, "accuracy": correct / n}})


scheduler = TinyTask({args})
scheduler.launch_task(task_id="tiny-task")
'''


def write_fedavg(folder: Path, name: str = "task.py", base: str = "FedAvgScheduler",
                 batch_size: int | None = 32, args: str = "max_rounds=2, log_rounds=1") -> Path:
    """A small FedAvg (or FedSGD) task on the tiny MNIST files."""
    path = Path(folder) / name
    path.write_text(FEDAVG.format(base=base, batch_size=batch_size, args=args))
    return path

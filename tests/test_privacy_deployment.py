"""Issue 11 on loopback deployment: a DP task and a SecAgg+ task through the server and
client commands (SuperLink, SuperNodes, warm executors), --insecure, stopped by PID."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_helpers import Cluster, summary

pytestmark = pytest.mark.timeout(1200)  # upper bound: this CPU is shared

TASK = '''
import torch
import torch.nn.functional as F
import torchvision
from torch import nn, optim
from torch.utils.data import DataLoader

from alphafed import get_dataset_dir
from alphafed.fed_avg import {base}, register_metrics

TRANSFORM = torchvision.transforms.ToTensor()


class Task({base}):
    def build_model(self):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def build_optimizer(self, model):
        return optim.SGD(model.parameters(), lr=0.1)

    def build_train_dataloader(self):
        data = torchvision.datasets.MNIST(get_dataset_dir(self.task_id), train=True, transform=TRANSFORM)
        return DataLoader(data, batch_size=32, shuffle=True)

    def build_test_dataloader(self):
        data = torchvision.datasets.MNIST(get_dataset_dir(self.task_id), train=False, transform=TRANSFORM)
        return DataLoader(data, batch_size=100)

    def step(self, x, y):
        self.optimizer.zero_grad()
        F.cross_entropy(self.model(x), y).backward()
        self.optimizer.step()

    def train_a_batch(self, x, y):
        self.step(x, y)

    def train_an_epoch(self):
        for x, y in self.train_loader:
            self.step(x, y)

    @register_metrics(name="test_results", keys=["accuracy"])
    def test(self):
        correct = sum((self.model(x).argmax(1) == y).sum().item() for x, y in self.test_loader)
        self.get_metrics("test_results").append_metrics_item({{"accuracy": correct / len(self.test_loader.dataset)}})


scheduler = Task({args})
'''


@pytest.fixture
def cluster(tmp_path: Path):  # noqa: ANN201
    c = Cluster(tmp_path)
    yield c
    c.stop()


@pytest.mark.parametrize(
    ("base", "args", "clients", "extra"),
    [
        ("DPFedAvgScheduler",
         "w_cap=100, q=1.0, S=1.0, z=0.5, max_rounds=2, log_rounds=1, schedule_timeout=180, min_clients=2",
         2, ("--target-epsilon", "100")),
        ("SecureFedAvgScheduler", "t=2, min_clients=3, max_rounds=2, log_rounds=1, schedule_timeout=180", 3, ()),
    ],
    ids=["dp", "secagg"],
)
def test_a_private_task_on_loopback_deployment(  # noqa: PLR0913
    cluster: Cluster, tiny_mnist: Path, base: str, args: str, clients: int, extra: tuple[str, ...]
) -> None:
    task = cluster.root / "task.py"
    task.write_text(TASK.format(base=base, args=args))
    out = cluster.root / "run"
    server = cluster.server("server", str(task), "--out", str(out), "--data-dir", str(tiny_mnist),
                            "--seed", "0", "--insecure", *extra)
    for i in range(clients):
        cluster.client(f"client-{i}", "--insecure", "--data-dir", str(tiny_mnist),
                       "--partition-id", str(i), "--num-partitions", str(clients))
    assert server.wait(600) == 0, server.text()[-4000:]
    result = summary(out)
    assert result["status"] == "completed" and result["rounds_completed"] == 2
    assert all(r["train"]["num-results"] == clients for r in result["rounds"])
    assert (out / "model.pt").exists()
    if base == "DPFedAvgScheduler":
        assert 0 < result["privacy"]["epsilon"] < 100 and result["privacy"]["delta"] == 1e-5
        assert (out / "metrics" / "privacy.csv").read_text().count("\n") == 3  # header + 2 rounds
    else:
        assert "SecAgg+: the sum of 3 updates unmasked" in server.text()

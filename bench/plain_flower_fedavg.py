"""A hand-written plain Flower FedAvg app (Message API, Ray simulation): the baseline of
``bench/fedavg_overhead.py``.

It does the work of ``simulations/mnist/fedavg.py`` run with ``--reset-optimizer
--client-eval off``: the same CNN, IID partitions from flwr-datasets' ``IidPartitioner``,
SGD (lr 0.05, momentum 0.5, batch 64) built fresh each round, one local epoch, the same
per-(client, round) torch seeds, a weighted FedAvg, a central test on the test set after
every round, and per-round outputs (a checkpoint of the global weights and a CSV row).

    python bench/plain_flower_fedavg.py --num-clients 3 --rounds 10 --seed 0 --out runs/plain

Prints one JSON line at the end: final accuracy and the round loop's seconds.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from torch.utils.data import DataLoader, Subset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "simulations" / "mnist"))
from mnist_common import MNIST_TRANSFORM, ConvNet, evaluate  # noqa: E402

from alphafed_flwr.datasets import prepare_offline_mnist  # noqa: E402  (data files only)


def seed_of(*parts: object) -> int:
    """The per-(client, round) seed rule both sides use."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "big") & 0x7FFFFFFF


@functools.lru_cache(maxsize=2)
def dataset(root: str, train: bool) -> torchvision.datasets.MNIST:
    return torchvision.datasets.MNIST(root, train=train, download=False, transform=MNIST_TRANSFORM)


@functools.lru_cache(maxsize=8)
def partition(root: str, num: int, pid: int) -> list[int]:
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner

    partitioner = IidPartitioner(num_partitions=num)
    partitioner.dataset = Dataset.from_dict({"idx": np.arange(len(dataset(root, True)))})
    return [int(i) for i in partitioner.load_partition(pid)["idx"]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/plain_flower")
    args = parser.parse_args()
    root = args.data_dir or str(prepare_offline_mnist(Path.home() / ".cache" / "alphafed_flwr" / "datasets"))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    num, seed = args.num_clients, args.seed
    result: dict[str, float] = {}

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        model = ConvNet()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
        loader = DataLoader(Subset(dataset(root, True), partition(root, num, pid)), batch_size=64, shuffle=True)
        server_round = int(msg.content["config"]["server-round"])
        torch.manual_seed(seed_of(seed, f"client-{pid}", server_round))
        model.train()
        for data, labels in loader:
            optimizer.zero_grad()
            F.nll_loss(model(data), labels).backward()
            optimizer.step()
        content = RecordDict(
            {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(loader.dataset)})}
        )
        return Message(content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def server(grid: Grid, context: Context) -> None:
        torch.manual_seed(seed)
        model = ConvNet()
        test_loader = DataLoader(dataset(root, False), batch_size=1000)

        def central_test(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            loss, accuracy = evaluate(model, test_loader)
            if server_round > 0:  # the same per-round outputs as alphafed-flwr
                np.savez(out / "checkpoint.npz", **{k: v.numpy() for k, v in arrays.items()})
                with (out / "test_results.csv").open("a", newline="") as handle:
                    csv.writer(handle).writerow([server_round, loss, accuracy])
                result["accuracy"] = accuracy
            return MetricRecord({"loss": loss, "accuracy": accuracy})

        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=num, min_available_nodes=num)
        start = time.monotonic()
        strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=args.rounds, evaluate_fn=central_test)
        result["loop_seconds"] = time.monotonic() - start

    run_simulation(server_app, client_app, num_supernodes=num,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    print(json.dumps(result))


if __name__ == "__main__":
    # Run from the importable module, so that Ray actors import these functions by name.
    import plain_flower_fedavg

    plain_flower_fedavg.main()

"""FedAvg adapter overhead: our FedAvg MNIST simulation against a hand-written plain Flower
app doing the same work, side by side, plus centralized training of the same epochs.

    python bench/fedavg_overhead.py [--pairs 3] [--rounds 10] [--data-dir ../shared/data]

Both sides: the same CNN, IID partitions, seeds (model, partitions, per-client shuffles and
dropout), rounds, one local epoch, a fresh client optimizer every round, a central test
after every round and per-round checkpoint/metrics files, each run in a fresh process on
Flower's Ray simulation engine. Runs alternate (ours first, then plain first, ...) because
this machine is noisy; the medians and spreads of the per-pair ratios are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from common import ROOT, default_data_dir, last_json, run_command, spread

sys.path.insert(0, str(ROOT / "simulations" / "mnist"))
from mnist_common import MNIST_TRANSFORM, ConvNet, evaluate  # noqa: E402


def ours(args: argparse.Namespace, out: Path) -> tuple[float, float, float]:
    cmd = ["-m", "alphafed_flwr.simulation", "simulations/mnist/fedavg.py", "--num-clients",
           str(args.num_clients), "--rounds", str(args.rounds), "--seed", str(args.seed),
           "--reset-optimizer", "--client-eval", "off", "--fresh", "--out", str(out)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    wall, _ = run_command(cmd, out.with_suffix(".log"))
    import json  # pylint: disable=import-outside-toplevel

    summary = json.loads((out / "summary.json").read_text())
    return wall, summary["run_seconds"], summary["final_test"]["accuracy"]


def plain(args: argparse.Namespace, out: Path) -> tuple[float, float, float]:
    cmd = ["bench/plain_flower_fedavg.py", "--num-clients", str(args.num_clients), "--rounds",
           str(args.rounds), "--seed", str(args.seed), "--out", str(out)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    wall, stdout = run_command(cmd, out.with_suffix(".log"))
    result = last_json(stdout)
    return wall, result["loop_seconds"], result["accuracy"]


def centralized(args: argparse.Namespace) -> tuple[float, float]:
    """The same CNN and optimizer on all training data, one epoch per round, tested each epoch."""
    import torchvision  # pylint: disable=import-outside-toplevel

    from alphafed_flwr.datasets import prepare_offline_mnist  # pylint: disable=C0415

    root = args.data_dir or str(prepare_offline_mnist(Path.home() / ".cache" / "alphafed_flwr" / "datasets"))
    train = DataLoader(torchvision.datasets.MNIST(root, True, transform=MNIST_TRANSFORM), batch_size=64, shuffle=True)
    test = DataLoader(torchvision.datasets.MNIST(root, False, transform=MNIST_TRANSFORM), batch_size=1000)
    torch.manual_seed(args.seed)
    model = ConvNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    start = time.monotonic()
    accuracy = 0.0
    for _ in range(args.rounds):
        model.train()
        for data, labels in train:
            optimizer.zero_grad()
            F.nll_loss(model(data), labels).backward()
            optimizer.step()
        accuracy = evaluate(model, test)[1]
    return time.monotonic() - start, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--num-clients", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--out", default="runs/bench/fedavg_overhead")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    print(f"data: {args.data_dir or 'offline MNIST subset'}; {args.num_clients} clients, {args.rounds} rounds, "
          f"{args.pairs} alternating pairs", flush=True)
    rows = []
    for pair in range(args.pairs):
        order = [("ours", ours), ("plain", plain)]
        if pair % 2:
            order.reverse()
        results = {}
        for name, fn in order:
            results[name] = fn(args, out / f"{name}-{pair}")
            wall, loop, acc = results[name]
            print(f"pair {pair + 1} {name:5s}: wall {wall:6.1f}s  round loop {loop:6.1f}s  accuracy {acc:.4f}", flush=True)
        rows.append(results)
    wall_ratio = [r["ours"][0] / r["plain"][0] for r in rows]
    loop_ratio = [r["ours"][1] / r["plain"][1] for r in rows]
    acc_gap = [100 * (r["ours"][2] - r["plain"][2]) for r in rows]
    central_seconds, central_acc = centralized(args)
    ours_loop = statistics.median(r["ours"][1] for r in rows)
    print()
    print(f"wall-time ratio ours/plain, median (min-max):       {spread(wall_ratio)}  (target <= 1.05)")
    print(f"round-loop ratio ours/plain, median (min-max):      {spread(loop_ratio)}")
    print(f"final accuracy ours - plain, pp, median (min-max):  {spread(acc_gap)}  (target within 0.5)")
    print(f"centralized: {args.rounds} epochs {central_seconds:.1f}s, accuracy {central_acc:.4f}; "
          f"ours/centralized (round loop) {ours_loop / central_seconds:.2f}x")
    print(f"README: FedAvg {args.num_clients} clients x {args.rounds} rounds: ours/plain wall {statistics.median(wall_ratio):.3f} "
          f"(spread {min(wall_ratio):.3f}-{max(wall_ratio):.3f}), loop {statistics.median(loop_ratio):.3f}; "
          f"accuracy gap {statistics.median(acc_gap):+.2f} pp; {ours_loop / central_seconds:.2f}x centralized")


if __name__ == "__main__":
    main()

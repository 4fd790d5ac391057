"""Vertical split learning on MNIST (left/right halves): our simulation for several K
(batches per exchange) against the same split model trained centrally on the same batches.

    python bench/vertical_mnist.py [--rounds 20] [--ks 1 2 4 8 16] [--data-dir ../shared/data]
    python bench/vertical_mnist.py --deployment [--deploy-rounds 3]   # adds loopback deployment

Centralized: host and collaborator feature models and the infer model in one process, the
same batches in the same order (``split_mnist.round_order``), the same Adam optimizers and
epochs. Epoch times are medians over rounds without a test. The adapter's share of a round
is the time neither in Flower's transport nor in user code (the models and generators): on
the collaborator, its handler time minus its model time; on the host, the round's time
minus the exchanges' wall time and minus its own model time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from common import ROOT, default_data_dir, run_command

sys.path.insert(0, str(ROOT / "simulations" / "mnist"))

HOST = "simulations/mnist/vertical_host.py"
COLLABORATOR = "simulations/mnist/vertical_collaborator.py"


def centralized(rounds: int, data_dir: str | None) -> tuple[float, float]:
    """Median epoch seconds and final test accuracy of the split model in one process."""
    from alphafed_flwr.api.env import RunEnvironment, set_environment  # pylint: disable=C0415

    set_environment(RunEnvironment("server", "bench", None, Path(data_dir) if data_dir else None))
    from split_mnist import HalfConvNet, InferModel, batches, load, round_order  # pylint: disable=C0415

    images, labels = load("bench", train=True)
    test_images, test_labels = load("bench", train=False)
    torch.manual_seed(0)
    host, collab, infer = HalfConvNet(), HalfConvNet(), InferModel()
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (host, collab, infer)]
    epoch_seconds = []
    for epoch in range(1, rounds + 1):
        start = time.monotonic()
        for ids in batches(round_order(set(range(len(images))), epoch), 128):
            index = torch.tensor(ids)
            fused = torch.cat((host(images[index, :, :, :14]), collab(images[index, :, :, 14:])), 1)
            for opt in optimizers:
                opt.zero_grad()
            F.nll_loss(infer(fused), labels[index]).backward()
            for opt in optimizers:
                opt.step()
        epoch_seconds.append(time.monotonic() - start)
    with torch.no_grad():
        fused = torch.cat((host(test_images[:, :, :, :14]), collab(test_images[:, :, :, 14:])), 1)
        accuracy = (infer(fused).argmax(1) == test_labels).float().mean().item()
    return statistics.median(epoch_seconds), accuracy


def untested(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rounds = [r for r in summary["rounds"] if not r.get("test")]
    return rounds or summary["rounds"]


def shares(summary: dict[str, Any]) -> dict[str, float]:
    """Per round (medians): seconds, exchanges, and the split of an exchange's time."""
    rows = untested(summary)
    out: dict[str, float] = {"epoch": statistics.median(r["seconds"] for r in rows)}
    out["exchanges"] = statistics.median(r["stats"]["exchanges"] for r in rows)
    adapter, transport, model = [], [], []
    for r in rows:
        s = r["stats"]
        collaborator_adapter = s["time-handler"] - s["time-model"]
        host_adapter = r["seconds"] - s["exchange-seconds"] - s["host-model-seconds"]
        adapter.append((collaborator_adapter + max(host_adapter, 0.0)) / r["seconds"])
        transport.append((s["exchange-seconds"] - s["time-handler"]) / r["seconds"])
        model.append((s["time-model"] + s["host-model-seconds"]) / r["seconds"])
    out.update(adapter=statistics.median(adapter), transport=statistics.median(transport),
               model=statistics.median(model))
    out["per-exchange"] = out["epoch"] / out["exchanges"]
    return out


def simulate(args: argparse.Namespace, k: int, out: Path) -> dict[str, Any]:
    cmd = ["-m", "alphafed_flwr.simulation", "--host", HOST, "--collaborator", COLLABORATOR,
           "--rounds", str(args.rounds), "--batches-per-exchange", str(k), "--seed", "0",
           "--fresh", "--out", str(out)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    run_command(cmd, out.with_suffix(".log"))
    return json.loads((out / "summary.json").read_text())


def deploy(args: argparse.Namespace, k: int, out: Path) -> dict[str, Any]:
    """Host and one collaborator as separate processes on loopback (insecure, warm executor)."""
    import subprocess  # pylint: disable=import-outside-toplevel

    from alphafed_flwr.deploy.processes import free_port  # pylint: disable=C0415

    address = f"127.0.0.1:{free_port()}"
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    client = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "alphafed_flwr.client", "--server", address, "--insecure",
         "--collaborator", COLLABORATOR, "--out", str(out / "collaborator"), *data],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        run_command(["-m", "alphafed_flwr.server", "--host", HOST, "--collaborators", "1",
                     "--batches-per-exchange", str(k), "--rounds", str(args.deploy_rounds),
                     "--address", address, "--out", str(out), "--insecure", "--fresh", *data],
                    out.with_suffix(".log"), timeout=3600)
    finally:
        client.terminate()
        client.wait(60)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--deployment", action="store_true", help="also run K=1 and the best K on loopback")
    parser.add_argument("--deploy-rounds", type=int, default=3,
                        help="deployment rounds; round 2 is the one without a test")
    parser.add_argument("--out", default="runs/bench/vertical")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    print(f"data: {args.data_dir or 'offline MNIST subset'}; {args.rounds} rounds, batch 128", flush=True)
    central_epoch, central_acc = centralized(args.rounds, args.data_dir)
    print(f"centralized       : accuracy {central_acc:.4f}, epoch {central_epoch:.2f}s", flush=True)
    results = {}
    for k in args.ks:
        summary = simulate(args, k, out / f"sim-k{k}")
        acc = summary["final_test"]["accuracy"]
        s = shares(summary)
        results[k] = (acc, s)
        print(f"simulation K={k:<3d}: accuracy {acc:.4f}, epoch {s['epoch']:.2f}s = {s['epoch'] / central_epoch:.2f}x "
              f"centralized, {s['exchanges']:.0f} exchanges ({s['per-exchange'] * 1000:.0f} ms each); "
              f"adapter {s['adapter']:.1%}, transport {s['transport']:.1%}, user code {s['model']:.1%}", flush=True)
    base = results[min(results)][0]
    good = [k for k, (acc, _) in results.items() if acc >= base - 0.01]
    best = min(good, key=lambda k: results[k][1]["epoch"])
    ratio = results[best][1]["epoch"] / central_epoch
    print()
    print(f"K=1 vs centralized: {100 * (results[min(results)][0] - central_acc):+.2f} pp (target within 1.5, >= 92%)")
    print(f"best K within 1 pp of K=1: K={best}, {ratio:.2f}x centralized (target <= 3x)")
    line = (f"README: vertical MNIST {args.rounds} rounds: K=1 {100 * base:.2f}% vs centralized {100 * central_acc:.2f}%; "
            f"best K={best} {100 * results[best][0]:.2f}% at {ratio:.2f}x centralized; adapter share "
            f"{results[best][1]['adapter']:.1%} (K={best}), {results[min(results)][1]['adapter']:.1%} (K=1)")
    if args.deployment:
        for k in sorted({1, best}):
            start = time.monotonic()
            summary = deploy(args, k, out / f"deploy-k{k}")
            s = shares(summary)
            print(f"deployment K={k:<3d}: epoch {s['epoch']:.1f}s, {s['exchanges']:.0f} exchanges "
                  f"({s['per-exchange']:.2f}s each); adapter {s['adapter']:.1%}, transport {s['transport']:.1%}, "
                  f"user code {s['model']:.1%}; run {time.monotonic() - start:.0f}s (target <= 30 s per epoch)",
                  flush=True)
            line += f"; deployment K={k} {s['epoch']:.1f}s/epoch"
    print(line)


if __name__ == "__main__":
    main()

"""Several parties: split learning with a host and two collaborators against the same model
trained centrally on the same columns, side by side in one run.

    python bench/vertical_parties.py [--rounds 10] [--mnist-rounds 5] [--mnist-k 1] [--data-dir ../shared/data]
    python bench/vertical_parties.py --speed [--speed-rounds 3] [--repeats 2] [--threads 1]
    python bench/vertical_parties.py --speed --deployment-only   # only the loopback deployment

1. Breast cancer (scikit-learn's table, FATE's hetero benchmark): the host holds the labels
   and 5 columns, collaborators A and B 15 and 10; each holds a different 90% of the
   patients, so the PSI keeps the ~73% they share. Compared: the simulation (K=1), the same
   three-party model trained in one process on the same rows, batches and initial weights
   (``simulations/breast_cancer/centralized.py``), and the host's model alone on its 5
   columns. Test AUC on the common patients' test rows.
2. MNIST in three column strips (``simulations/mnist/vertical3_*.py``): the simulation at
   K = ``--mnist-k`` against the same three-strip model trained in one process on the same
   batches from the same initial weights.

3. ``--speed`` (alone): the two-party MNIST halves job at K=1 (``bench/vertical_mnist.py``'s
   task and centralized baseline): centralized, the simulation command with Flower's engine
   polling every 0.1 s (``ALPHAFED_ENGINE_DISPATCH=flower``) and with its default dispatch on
   push (``alphafed_flwr.compat.set_simulation_poll``), alternating ``--repeats`` times, and
   the loopback deployment (``python -m alphafed_flwr.server`` + ``.client``): seconds per
   exchange. Every process gets ``--threads`` torch threads (``OMP_NUM_THREADS``).

Epoch times: medians over the simulation's rounds without a test; centralized: the mean
over its epochs, with ``--threads`` torch threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from common import ROOT, default_data_dir, run_command

sys.path[:0] = [str(ROOT / "simulations" / "breast_cancer"), str(ROOT / "simulations" / "mnist")]

TABULAR = ["--host", "simulations/breast_cancer/host.py",
           "--collaborator", "simulations/breast_cancer/collaborator_a.py",
           "--collaborator", "simulations/breast_cancer/collaborator_b.py"]
MNIST = ["--host", "simulations/mnist/vertical3_host.py",
         "--collaborator", "simulations/mnist/vertical3_middle.py",
         "--collaborator", "simulations/mnist/vertical3_right.py"]


def simulate(parties: list[str], rounds: int, k: int, out: Path, data_dir: str | None = None) -> dict[str, Any]:
    """Run the simulation command; return its summary."""
    cmd = ["-m", "alphafed_flwr.simulation", *parties, "--rounds", str(rounds), "--batches-per-exchange",
           str(k), "--seed", "0", "--fresh", "--out", str(out)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    for attempt in (1, 2, 3):  # a loaded machine can miss Ray's fixed 30 s raylet start-up wait
        try:
            run_command(cmd, out.with_suffix(".log"), timeout=7200)
            break
        except RuntimeError:
            if attempt == 3 or "timed out during startup" not in out.with_suffix(".log").read_text():
                raise
            print("  (Ray's node did not start within its 30 s; trying again)", flush=True)
    return json.loads((out / "summary.json").read_text())


def epoch_seconds(summary: dict[str, Any]) -> float:
    """Median seconds of the rounds without a test (all rounds if every one tested)."""
    rows = [r for r in summary["rounds"] if not r.get("test")] or summary["rounds"]
    return statistics.median(r["seconds"] for r in rows)


def tabular(args: argparse.Namespace, out: Path) -> tuple[str, str]:
    """Print the breast-cancer comparison; return its README line part and ratio text."""
    from breast_cancer_common import party_ids, split_ids  # pylint: disable=import-outside-toplevel
    from centralized import PARTIES, train_centralized  # pylint: disable=import-outside-toplevel

    held = [set(party_ids(p)) for p in PARTIES]
    common = set.intersection(*held)
    train, test = split_ids(common)
    print(f"breast cancer: parties hold {', '.join(str(len(h)) for h in held)} of 569 patients; "
          f"{len(common)} common ({len(train)} train, {len(test)} test); {args.rounds} rounds, batch 32", flush=True)
    start = time.monotonic()
    central = train_centralized(train, test, args.rounds)
    central_epoch = (time.monotonic() - start) / args.rounds
    alone = train_centralized(train, test, args.rounds, parties=("host",))
    summary = simulate(TABULAR, args.rounds, 1, out / "breast-cancer")
    split, epoch = summary["final_test"], epoch_seconds(summary)
    print(f"  centralized, 3 parties' columns: AUC {central['auc']:.4f}, accuracy {central['accuracy']:.4f}, "
          f"epoch {central_epoch * 1000:.0f} ms", flush=True)
    print(f"  host alone, its 5 columns      : AUC {alone['auc']:.4f}, accuracy {alone['accuracy']:.4f}", flush=True)
    print(f"  simulation K=1, 3 parties      : AUC {split['auc']:.4f}, accuracy {split['accuracy']:.4f}, "
          f"epoch {epoch:.2f}s = {epoch / central_epoch:.1f}x centralized "
          f"({summary['rounds'][-1]['stats'].get('exchanges', 0):.0f} exchanges per collaborator)", flush=True)
    return (f"breast cancer 3 parties K=1 AUC {split['auc']:.4f} vs centralized {central['auc']:.4f} "
            f"(host alone {alone['auc']:.4f})"), f"{epoch:.2f}s/epoch"


def mnist_centralized(rounds: int, data_dir: str | None) -> tuple[float, float]:
    """Mean epoch seconds and final test accuracy of the three-strip model in one process."""
    from alphafed_flwr.api.env import RunEnvironment, set_environment  # pylint: disable=C0415

    set_environment(RunEnvironment("server", "bench", None, Path(data_dir) if data_dir else None))
    from split_mnist import InferModel, batches, load, round_order  # pylint: disable=C0415
    from strips import STRIPS, strip, strip_model  # pylint: disable=C0415

    images, labels = load("bench", train=True)
    test_images, test_labels = load("bench", train=False)
    models = {key: strip_model(key) for key in STRIPS}
    torch.manual_seed(0)
    infer = InferModel(width=64 * len(STRIPS))
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (*models.values(), infer)]

    def logits(x: torch.Tensor) -> torch.Tensor:
        return infer(torch.cat([models[key](strip(x, key)) for key in STRIPS], dim=1))

    start = time.monotonic()
    for epoch in range(1, rounds + 1):
        for ids in batches(round_order(set(range(len(images))), epoch), 128):
            index = torch.tensor(ids)
            for opt in optimizers:
                opt.zero_grad()
            F.nll_loss(logits(images[index]), labels[index]).backward()
            for opt in optimizers:
                opt.step()
    seconds = (time.monotonic() - start) / rounds
    with torch.no_grad():
        accuracy = (logits(test_images).argmax(1) == test_labels).float().mean().item()
    return seconds, accuracy


def mnist(args: argparse.Namespace, out: Path) -> tuple[str, str]:
    """Print the three-strip MNIST comparison; return its README line part and epoch text."""
    print(f"MNIST in 3 strips: {args.mnist_rounds} rounds, batch 128, K={args.mnist_k}; "
          f"data: {args.data_dir or 'offline MNIST subset'}", flush=True)
    central_epoch, central_acc = mnist_centralized(args.mnist_rounds, args.data_dir)
    summary = simulate(MNIST, args.mnist_rounds, args.mnist_k, out / f"mnist3-k{args.mnist_k}", args.data_dir)
    acc, epoch = summary["final_test"]["accuracy"], epoch_seconds(summary)
    print(f"  centralized, 3 strips          : accuracy {central_acc:.4f}, epoch {central_epoch:.2f}s", flush=True)
    print(f"  simulation K={args.mnist_k}, 3 parties      : accuracy {acc:.4f}, epoch {epoch:.2f}s = "
          f"{epoch / central_epoch:.1f}x centralized", flush=True)
    return (f"MNIST 3 strips {args.mnist_rounds} rounds K={args.mnist_k} {100 * acc:.2f}% vs centralized "
            f"{100 * central_acc:.2f}%"), f"{epoch / central_epoch:.1f}x"


@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set (or, for ``None``, remove) environment variables for the commands run inside."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def per_exchange(summary: dict[str, Any]) -> tuple[float, float]:
    """Median over untested rounds: seconds per exchange (whole round / exchanges, user code
    included), and transport per exchange (exchange time the collaborator's handler did not use)."""
    rows = [r for r in summary["rounds"] if not r.get("test")] or summary["rounds"]
    whole = statistics.median(r["seconds"] / r["stats"]["exchanges"] for r in rows)
    transport = statistics.median((r["stats"]["exchange-seconds"] - r["stats"]["time-handler"]) / r["stats"]["exchanges"]
                                  for r in rows)
    return whole, transport


def k1_speed(args: argparse.Namespace, out: Path) -> str:
    """The two-party MNIST job at K=1: centralized, the simulation with Flower's 0.1 s dispatch
    poll and with dispatch on push (alternating, ``--repeats`` times; each run's ratio is to the
    centralized epoch measured just before it), and the loopback deployment."""
    from vertical_mnist import COLLABORATOR, HOST, centralized  # pylint: disable=import-outside-toplevel

    print(f"K=1 speed, two-party MNIST halves, {args.speed_rounds} rounds, {args.threads} torch thread(s) per "
          f"process; load average {os.getloadavg()[0]:.1f}", flush=True)
    parties = ["--host", HOST, "--collaborator", COLLABORATOR]
    names = {"flower": "Flower's 0.1 s poll", "push": "dispatch on push"}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    central: list[float] = []
    for repeat in range(1, args.repeats + 1):  # centralized, then both dispatches: all see the same load
        central_epoch, central_acc = centralized(args.speed_rounds, args.data_dir)
        central.append(central_epoch)
        print(f"    run {repeat}, centralized: epoch {central_epoch:.2f}s, accuracy {central_acc:.4f}", flush=True)
        for dispatch in names:
            with environment(ALPHAFED_ENGINE_DISPATCH=dispatch, OMP_NUM_THREADS=str(args.threads)):
                summary = simulate(parties, args.speed_rounds, 1, out / f"speed-{dispatch}-{repeat}", args.data_dir)
            results[dispatch].append(summary)
            print(f"    run {repeat}, {names[dispatch]}: epoch {epoch_seconds(summary):.2f}s, accuracy "
                  f"{summary['final_test']['accuracy']:.4f}; load average {os.getloadavg()[0]:.1f}", flush=True)
    central_epoch = statistics.median(central)
    print(f"  centralized                 : accuracy {central_acc:.4f}, epoch {central_epoch:.2f}s "
          f"(median of {len(central)})", flush=True)
    line = f"K=1 MNIST halves {args.speed_rounds} rounds: centralized {central_epoch:.2f}s/epoch {100 * central_acc:.2f}%"
    for dispatch, summaries in results.items():
        accuracies = {s["final_test"]["accuracy"] for s in summaries}
        epoch = statistics.median(epoch_seconds(s) for s in summaries)
        ratio = statistics.median(epoch_seconds(s) / c for s, c in zip(summaries, central, strict=True))
        transport = statistics.median(per_exchange(s)[1] for s in summaries)
        print(f"  simulation K=1, {names[dispatch]:<19}: accuracy {', '.join(f'{a:.4f}' for a in sorted(accuracies))}, "
              f"epoch {epoch:.2f}s, {ratio:.2f}x centralized (median over runs of the run's ratio); transport "
              f"{transport * 1000:.0f} ms per exchange", flush=True)
        line += f"; simulation {names[dispatch]} {epoch:.2f}s = {ratio:.2f}x"
    if not args.skip_deployment:
        line += "; " + k1_deployment(args, out)
    print(f"  load average at the end: {os.getloadavg()[0]:.1f}", flush=True)
    return line


def k1_deployment(args: argparse.Namespace, out: Path) -> str:
    """The two-party MNIST job at K=1 on the loopback deployment; its README part."""
    from vertical_mnist import deploy  # pylint: disable=import-outside-toplevel

    deployed = argparse.Namespace(data_dir=args.data_dir, deploy_rounds=args.speed_rounds)
    load = os.getloadavg()[0]
    with environment(OMP_NUM_THREADS=str(args.threads)):
        summary = deploy(deployed, 1, out / "speed-deployment")
    whole, transport = per_exchange(summary)
    print(f"  deployment K=1 (loopback)   : accuracy {summary['final_test']['accuracy']:.4f}, {whole:.3f}s per "
          f"exchange (user code included; transport {transport * 1000:.0f} ms); load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after", flush=True)
    return f"deployment {whole:.3f}s per exchange (transport {transport * 1000:.0f} ms)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="breast-cancer rounds")
    parser.add_argument("--mnist-rounds", type=int, default=5)
    parser.add_argument("--mnist-k", type=int, default=1, help="batches per exchange of the MNIST run")
    parser.add_argument("--skip-mnist", action="store_true")
    parser.add_argument("--speed", action="store_true",
                        help="only the K=1 speed check: two-party MNIST, centralized vs simulation (Flower's "
                             "dispatch poll and dispatch on push) vs loopback deployment")
    parser.add_argument("--repeats", type=int, default=2, help="simulation runs per dispatch in --speed")
    parser.add_argument("--skip-deployment", action="store_true", help="--speed without the loopback deployment")
    parser.add_argument("--deployment-only", action="store_true",
                        help="--speed with only the loopback deployment (no centralized or simulation runs)")
    parser.add_argument("--speed-rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the centralized runs, and (OMP_NUM_THREADS) of every process of --speed "
                             "(on a loaded machine 2 threads made the tabular baseline 30x slower)")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--out", default="runs/bench/parties")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    torch.set_num_threads(args.threads)
    if args.speed and args.deployment_only:
        print(f"K=1 speed, two-party MNIST halves on loopback, {args.speed_rounds} rounds, {args.threads} torch "
              f"thread(s) per process", flush=True)
        print(f"README: K=1 MNIST halves {args.speed_rounds} rounds: {k1_deployment(args, out)}")
        return
    if args.speed:
        print(f"README: {k1_speed(args, out)}")
        return
    line, tab_epoch = tabular(args, out)
    line += f" ({tab_epoch})"
    if not args.skip_mnist:
        part, ratio = mnist(args, out)
        line += f"; {part} ({ratio} centralized epoch)"
    print(f"README: {line}")


if __name__ == "__main__":
    main()

"""Flower's strategies on an AlphaFed task, side by side in one run: accuracy after N rounds
and wall time relative to FedAvg.

    python bench/strategies.py [--rounds 10] [--num-clients 10] [--alpha 0.1] [--data-dir ../shared/data]

Every strategy trains the MNIST example CNN (``simulations/mnist/fedavg.py``; FedProx:
``simulations/mnist/fedprox.py``, the same task plus the proximal term) on the same
Dirichlet split (alpha 0.1: strongly label-skewed), with the same seeds, each run in a fresh
process on Flower's Ray simulation engine through ``--strategy``. The machine is shared,
so the wall times carry several percent of noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import ROOT, default_data_dir, run_command

#: name -> (task file, --strategy-arg values): server learning rates suited to this CNN
STRATEGIES: dict[str, tuple[str, list[str]]] = {
    "fedavg": ("simulations/mnist/fedavg.py", []),
    "fedprox": ("simulations/mnist/fedprox.py", ["proximal_mu=0.1"]),
    "fedadam": ("simulations/mnist/fedavg.py", ["eta=0.01"]),
    "fedyogi": ("simulations/mnist/fedavg.py", ["eta=0.01"]),
    "fedadagrad": ("simulations/mnist/fedavg.py", ["eta=0.01"]),
    "fedavgm": ("simulations/mnist/fedavg.py", ["server_momentum=0.5", "server_learning_rate=0.5"]),
    "fedmedian": ("simulations/mnist/fedavg.py", []),
    "fedtrimmedavg": ("simulations/mnist/fedavg.py", ["beta=0.2"]),
    "krum": ("simulations/mnist/fedavg.py", ["num_malicious_nodes=1"]),
    "multikrum": ("simulations/mnist/fedavg.py", ["num_malicious_nodes=1", "num_nodes_to_select=5"]),
    "bulyan": ("simulations/mnist/fedavg.py", ["num_malicious_nodes=1"]),
}


def run(name: str, args: argparse.Namespace, out: Path) -> dict[str, float]:
    task, params = STRATEGIES[name]
    cmd = ["-m", "alphafed_flwr.simulation", task, "--num-clients", str(args.num_clients),
           "--rounds", str(args.rounds), "--partition", "dirichlet", "--alpha", str(args.alpha),
           "--seed", str(args.seed), "--client-eval", "off", "--fresh", "--out", str(out),
           "--strategy", name]
    for param in params:
        cmd += ["--strategy-arg", param]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    wall, _ = run_command(cmd, out.with_suffix(".log"))
    summary = json.loads((out / "summary.json").read_text())
    return {"wall": wall, "loop": summary["run_seconds"], "accuracy": summary["final_test"]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="comma-separated subset (fedavg always runs first: the baseline)")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_strategies"))
    args = parser.parse_args()
    names = [n for n in args.strategies.split(",") if n and n != "fedavg"]
    # FedAvg runs first and last: the first run of a session pays for cold caches and the
    # machine's load drifts, so the baseline is the faster of the two.
    baselines = [run("fedavg", args, Path(args.out) / "fedavg-first")]
    print(f"fedavg (first): {json.dumps(baselines[0])}", flush=True)
    results, failed = {}, {}
    for name in names:
        try:
            results[name] = run(name, args, Path(args.out) / name)
        except RuntimeError as exc:  # e.g. Ray failing to start on an overloaded machine
            failed[name] = str(exc)
            print(f"{name}: FAILED: {exc}", flush=True)
            continue
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    baselines.append(run("fedavg", args, Path(args.out) / "fedavg-last"))
    print(f"fedavg (last): {json.dumps(baselines[1])}", flush=True)
    base = min(baselines, key=lambda res: res["wall"])
    results = {"fedavg": base, **results}
    print(f"\n{args.num_clients} clients, Dirichlet alpha={args.alpha}, {args.rounds} rounds, "
          f"data {args.data_dir or 'offline MNIST subset'}; FedAvg wall {baselines[0]['wall']:.1f} s "
          f"(first) and {baselines[1]['wall']:.1f} s (last): the faster is the baseline")
    print(f"{'strategy':<14} {'accuracy':>9} {'vs fedavg':>10} {'wall s':>8} {'wall/fedavg':>12}")
    for name, res in results.items():
        print(f"{name:<14} {res['accuracy']:>9.2%} {100 * (res['accuracy'] - base['accuracy']):>+9.2f}pp "
              f"{res['wall']:>8.1f} {res['wall'] / base['wall']:>12.2f}")
    for name, reason in failed.items():
        print(f"{name:<14} failed: {reason}")
    line = "; ".join(f"{n} {r['accuracy']:.2%} ({r['wall'] / base['wall']:.2f}x)" for n, r in results.items())
    print(f"README: strategies, {args.num_clients} clients, Dirichlet {args.alpha}, {args.rounds} rounds: {line}")


if __name__ == "__main__":
    main()

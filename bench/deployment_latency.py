"""Deployment latency on loopback: what a FedAvg round costs with Flower's defaults and with
each setting alphafed-flwr controls.

    python bench/deployment_latency.py [--rounds 4] [--data-dir ../shared/data]

One server and one client (insecure, loopback) run ``simulations/mnist/fedavg.py``; the
per-round time is the median over rounds 2..N. Configurations, each adding to the previous:

1. Flower's defaults: SuperExec polls every 1 s, the SuperNode sleeps 3 s after an empty
   pull and polls its ClientApp every 0.5 s, a not-yet-available message object is retried
   after 1 s, 2 s, 4 s..., every message starts a ClientApp process that imports torch and
   loads the task;
2. shorter waits (``alphafed_flwr.deploy.latency``): SuperExec poll 0.05 s, the SuperNode's
   sleeps capped at 0.05 s, object pulls retried after 10 ms backing off to 0.25 s;
3. the warm executor (``alphafed_flwr.deploy.executor``, the default): the node's ClientApp
   tasks run in one long-lived process that keeps torch, the task and its data loaded.

The server's own push/pull loop (5 ms) is used in all three.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import ROOT, default_data_dir, run_command

CONFIGS = [
    ("Flower defaults", {"server": ["--poll-interval", "1.0"], "client": ["--poll-interval", "0", "--no-warm-executor"]}),
    ("+ shorter waits", {"server": [], "client": ["--no-warm-executor"]}),
    ("+ warm executor (default)", {"server": [], "client": []}),
]


def one(args: argparse.Namespace, name: str, flags: dict[str, list[str]], out: Path) -> float:
    from alphafed_flwr.deploy.processes import free_port  # pylint: disable=C0415

    address = f"127.0.0.1:{free_port()}"
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    client = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "alphafed_flwr.client", "--server", address, "--insecure",
         "--out", str(out / "client"), *data, *flags["client"]],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        run_command(["-m", "alphafed_flwr.server", "simulations/mnist/fedavg.py", "--address", address,
                     "--rounds", str(args.rounds), "--client-eval", "off", "--out", str(out), "--insecure",
                     "--fresh", *data, *flags["server"]], out.with_suffix(".log"), timeout=1800)
    finally:
        client.terminate()
        client.wait(60)
    summary = json.loads((out / "summary.json").read_text())
    return statistics.median(r["seconds"] for r in summary["rounds"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--out", default="runs/bench/deployment")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    results = []
    for index, (name, flags) in enumerate(CONFIGS):
        seconds = one(args, name, flags, out / f"config-{index}")
        results.append((name, seconds))
        print(f"{name:28s}: {seconds:6.2f}s per round ({results[0][1] / seconds:.2f}x faster than defaults)",
              flush=True)
    print("README: deployment FedAvg round (1 client, loopback): " + "; ".join(f"{n} {s:.1f}s" for n, s in results))


if __name__ == "__main__":
    main()

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

    python bench/deployment_latency.py --idle [--idle-seconds 20]

``--idle`` (alone): the CPU that an idle deployment burns on polling. A SuperLink (with its
SuperExec polling as the server command's default sets it) and one client node (SuperNode, warm executor)
connected to it, no run: the cores used by all their processes over ``--idle-seconds``,
measured with psutil after the node has connected.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def idle_cpu(seconds: float, out: Path) -> dict[str, float]:
    """Cores used by an idle SuperLink and an idle client node (see the module's docstring)."""
    # pylint: disable=import-outside-toplevel
    import secrets
    import time

    import psutil

    from alphafed_flwr.deploy.control import Control
    from alphafed_flwr.deploy.processes import Managed, flower_env, free_port, python_module
    from alphafed_flwr.server import build_parser

    out.mkdir(parents=True, exist_ok=True)
    port, runtime_port, token = free_port(), free_port(), secrets.token_urlsafe(32)
    superlink = Managed(
        "superlink",
        python_module("alphafed_flwr.deploy.superlink", "--runtime-port", str(runtime_port), "--host", "127.0.0.1",
                      "--port", str(port), "--database", ":flwr-in-memory:", "--insecure"),
        flower_env(out / ".flwr-server", build_parser().get_default("poll_interval")), out,
        log=out / "superlink.log", stdin_data=f"{token}\n".encode(),
    )
    client = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "alphafed_flwr.client", "--server", f"127.0.0.1:{port}", "--insecure",
         "--out", str(out / "client")],
        cwd=ROOT, stdout=(out / "client.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    control = Control(f"127.0.0.1:{runtime_port}", token, None, insecure=True)
    try:
        control.wait_ready(60, superlink.alive, superlink.log_tail)
        deadline = time.monotonic() + 120
        while "SuperNode ID" not in (out / "client.log").read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not connect; see {out / 'client.log'}")
            time.sleep(0.5)
        time.sleep(5)  # start-up work done
        trees = {"server": psutil.Process(superlink.process.pid), "client": psutil.Process(client.pid)}
        before = {name: _tree_cpu(root) for name, root in trees.items()}
        time.sleep(seconds)
        return {name: (_tree_cpu(root) - before[name]) / seconds for name, root in trees.items()}
    finally:
        control.close()
        client.terminate()
        client.wait(60)
        superlink.stop()


def _tree_cpu(root: Any) -> float:
    """CPU seconds (user + system) used so far by a process and its descendants."""
    import psutil  # pylint: disable=import-outside-toplevel

    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--out", default="runs/bench/deployment")
    parser.add_argument("--idle", action="store_true", help="only the idle deployment's CPU")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    if args.idle:
        load = os.getloadavg()[0]
        cores = idle_cpu(args.idle_seconds, out / "idle")
        print(f"idle deployment over {args.idle_seconds:g}s (load average {load:.1f}): SuperLink + SuperExec "
              f"{cores['server']:.3f} cores, client node (SuperNode, executor) {cores['client']:.3f} cores")
        print(f"README: idle loopback deployment {cores['server'] + cores['client']:.3f} cores "
              f"(server {cores['server']:.3f}, node {cores['client']:.3f})")
        return
    results = []
    for index, (name, flags) in enumerate(CONFIGS):
        seconds = one(args, name, flags, out / f"config-{index}")
        results.append((name, seconds))
        print(f"{name:28s}: {seconds:6.2f}s per round ({results[0][1] / seconds:.2f}x faster than defaults)",
              flush=True)
    print("README: deployment FedAvg round (1 client, loopback): " + "; ".join(f"{n} {s:.1f}s" for n, s in results))


if __name__ == "__main__":
    main()

"""Scale: FedAvg simulations with 1,000 / 10,000 / 100,000 virtual clients, 10 sampled per
round, against bare Flower with a trivial ClientApp in the same setup.

    python bench/scale.py [--sizes 1000 10000 100000] [--rounds 5]
    python bench/scale.py --ray-cluster [--sizes 10000]


Ours: ``bench/scale_task.py`` (a linear model; 20 MNIST images per client, drawn lazily by a
sample seeded with the partition id: ``--partition sample``). Bare: ``bench/bare_flower_scale.py``.
Per-round time is the median over rounds 2..N (round 1 starts the Ray actors). Memory is
the peak, sampled every 0.5 s, of the resident set sizes summed over the whole process
tree (the driver, Ray's own processes and its workers), from psutil.

``--ray-cluster`` runs ours twice per size instead, side by side: on the usual private
local Ray instance (this machine's cores), and joined (``--ray-address``) to a two-node Ray
cluster started here with ``ray.cluster_utils.Cluster`` (1 CPU per node, on 127.0.0.1).
Both runs have two client actors. Memory is reported per part: the driver (the simulation
command) and each node's processes (raylet, workers, and on the head GCS and monitors).
The two nodes share this machine's cores, so this measures the cluster's overhead, not a
speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from common import ROOT, default_data_dir, last_json


def tree_rss(pid: int) -> float:
    """Summed RSS (bytes) of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def pids_rss(pids: set[int]) -> float:
    """Summed RSS (bytes) of the processes ``pids`` and all their descendants, each counted once."""
    seen: set[int] = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            seen.update(p.pid for p in [root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            continue
    total = 0.0
    for pid in seen:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def run(
    args: list[str], log: Path, parts: dict[str, set[int]] | None = None
) -> tuple[str, float, float, dict[str, float]]:
    """Run ``python args``; return its stdout, wall seconds, peak tree RSS (GB) and the peak RSS
    (GB) of each of ``parts`` (name -> PIDs of processes started elsewhere: Ray nodes)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as handle:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=handle,
                                text=True, env={**os.environ, "NO_COLOR": "1"})
        peak = [0.0]
        part_peaks = {name: 0.0 for name in parts or {}}

        def sample() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_rss(proc.pid))
                for name, pids in (parts or {}).items():
                    part_peaks[name] = max(part_peaks[name], pids_rss(pids))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout, _ = proc.communicate(timeout=1800)
        sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed; see {log}")
    return stdout, time.monotonic() - start, peak[0] / 1e9, {k: v / 1e9 for k, v in part_peaks.items()}


def ours_command(size: int, rounds: int, data_dir: str | None, out: Path) -> list[str]:
    """Our simulation command for ``size`` clients, 10 per round."""
    cmd = ["-m", "alphafed_flwr.simulation", "bench/scale_task.py", "--num-clients", str(size), "--rounds",
           str(rounds), "--partition", "sample", "--samples", "20", "--client-eval", "off", "--seed", "0",
           "--fresh", "--out", str(out)]
    return cmd + (["--data-dir", data_dir] if data_dir else [])


def round_seconds(out: Path) -> float:
    """Median seconds per round over rounds 2..N of a run's summary."""
    summary = json.loads((out / "summary.json").read_text())
    return statistics.median(r["seconds"] for r in summary["rounds"][1:])


def against_bare(args: argparse.Namespace, out: Path) -> None:
    """Ours vs bare Flower, per size."""
    rows = []
    for size in args.sizes:
        bare_out, bare_wall, bare_mem, _ = run(["bench/bare_flower_scale.py", "--nodes", str(size), "--rounds",
                                               str(args.rounds)], out / f"bare-{size}.log")
        bare = statistics.median(last_json(bare_out)["round_seconds"][1:])
        _, ours_wall, ours_mem, _ = run(ours_command(size, args.rounds, args.data_dir, out / f"ours-{size}"),
                                        out / f"ours-{size}.log")
        ours = round_seconds(out / f"ours-{size}")
        rows.append((size, ours, bare, ours_mem, bare_mem))
        print(f"{size:>7,d} clients: per round ours {ours:.2f}s, bare {bare:.2f}s, ratio {ours / bare:.2f} "
              f"(target <= 1.5); peak memory ours {ours_mem:.2f} GB, bare {bare_mem:.2f} GB "
              f"(wall {ours_wall:.0f}s / {bare_wall:.0f}s)", flush=True)
    print("README: scale " + "; ".join(
        f"{s:,d}: {o:.2f}/{b:.2f} s per round ({o / b:.2f}x), {m:.2f} GB" for s, o, b, m, _ in rows))


def node_pids(node: object) -> set[int]:
    """PIDs of a Ray node's own processes (raylet, GCS, monitors...); workers are their children."""
    return {info.process.pid for infos in node.all_processes.values() for info in infos}  # type: ignore[attr-defined]


def two_node_cluster(cluster_class: type, attempts: int = 3) -> object:
    """A head and a second node, 1 CPU each; Ray gives a node 30 s to start, which a busy
    machine can miss, so a failed start is retried (after shutting the partial cluster down)."""
    node_args = {"num_cpus": 1, "object_store_memory": 200 * 1024 * 1024}
    for attempt in range(1, attempts + 1):
        cluster = cluster_class(shutdown_at_exit=True)
        try:
            cluster.add_node(**node_args, include_dashboard=False)
            cluster.add_node(**node_args)
            cluster.wait_for_nodes(timeout=120)
            return cluster
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception on a slow start
            cluster.shutdown()
            if attempt == attempts:
                raise
            print(f"Ray cluster start failed ({exc}); retrying", flush=True)
    raise AssertionError("unreachable")


def against_cluster(args: argparse.Namespace, out: Path) -> None:
    """Ours on one node (private local Ray) vs joined to a two-node local Ray cluster, per size."""
    os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")  # loopback only
    from ray.cluster_utils import Cluster  # pylint: disable=import-outside-toplevel

    rows = []
    for size in args.sizes:
        _, single_wall, single_mem, _ = run(ours_command(size, args.rounds, args.data_dir, out / f"single-{size}"),
                                            out / f"single-{size}.log")
        single = round_seconds(out / f"single-{size}")
        print(f"{size:>7,d} clients, single node: {single:.2f}s per round, peak memory {single_mem:.2f} GB "
              f"(wall {single_wall:.0f}s)", flush=True)
        cluster = two_node_cluster(Cluster)
        try:
            parts = {"head": node_pids(cluster.head_node), "node2": node_pids(next(iter(cluster.worker_nodes)))}
            cmd = ours_command(size, args.rounds, args.data_dir, out / f"cluster-{size}")
            _, cluster_wall, driver_mem, nodes_mem = run(cmd + ["--ray-address", cluster.address],
                                                         out / f"cluster-{size}.log", parts)
        finally:
            cluster.shutdown()
        two = round_seconds(out / f"cluster-{size}")
        total = driver_mem + sum(nodes_mem.values())
        rows.append((size, single, two, single_mem, driver_mem, nodes_mem, total))
        print(f"{size:>7,d} clients: per round single node {single:.2f}s, two-node cluster {two:.2f}s "
              f"({two / single:.2f}x); peak memory single node {single_mem:.2f} GB (driver + local Ray); "
              f"cluster: driver {driver_mem:.2f} GB, head node {nodes_mem['head']:.2f} GB, second node "
              f"{nodes_mem['node2']:.2f} GB, sum of peaks {total:.2f} GB (wall {single_wall:.0f}s / "
              f"{cluster_wall:.0f}s)", flush=True)
    print("README: two-node Ray cluster " + "; ".join(
        f"{s:,d}: {a:.2f}/{b:.2f} s per round ({b / a:.2f}x), memory single {m:.2f} GB vs driver {d:.2f} + "
        f"head {n['head']:.2f} + node {n['node2']:.2f} GB" for s, a, b, m, d, n, _ in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="client counts (default 1000 10000 100000; with --ray-cluster 10000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--out", default="runs/bench/scale")
    parser.add_argument("--ray-cluster", action="store_true",
                        help="single node vs a two-node local Ray cluster, instead of ours vs bare Flower")
    args = parser.parse_args()
    args.sizes = args.sizes or ([10000] if args.ray_cluster else [1000, 10000, 100000])
    out = (ROOT / args.out).resolve()
    (against_cluster if args.ray_cluster else against_bare)(args, out)


if __name__ == "__main__":
    main()

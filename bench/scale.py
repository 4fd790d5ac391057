"""Scale: FedAvg simulations with 1,000 / 10,000 / 100,000 virtual clients, 10 sampled per
round, against bare Flower with a trivial ClientApp in the same setup.

    python bench/scale.py [--sizes 1000 10000 100000] [--rounds 5]

Ours: ``bench/scale_task.py`` (a linear model; 20 MNIST images per client, drawn lazily by a
sample seeded with the partition id: ``--partition sample``). Bare: ``bench/bare_flower_scale.py``.
Per-round time is the median over rounds 2..N (round 1 starts the Ray actors). Memory is
the peak, sampled every 0.5 s, of the resident set sizes summed over the whole process
tree (the driver, Ray's own processes and its workers), from psutil.
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


def run(args: list[str], log: Path) -> tuple[str, float, float]:
    """Run ``python args``; return its stdout, wall seconds and peak tree RSS (GB)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as handle:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=handle,
                                text=True, env={**os.environ, "NO_COLOR": "1"})
        peak = [0.0]

        def sample() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_rss(proc.pid))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout, _ = proc.communicate(timeout=1800)
        sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed; see {log}")
    return stdout, time.monotonic() - start, peak[0] / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--out", default="runs/bench/scale")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    rows = []
    for size in args.sizes:
        bare_out, bare_wall, bare_mem = run(["bench/bare_flower_scale.py", "--nodes", str(size), "--rounds",
                                            str(args.rounds)], out / f"bare-{size}.log")
        bare = statistics.median(last_json(bare_out)["round_seconds"][1:])
        cmd = ["-m", "alphafed_flwr.simulation", "bench/scale_task.py", "--num-clients", str(size), "--rounds",
               str(args.rounds), "--partition", "sample", "--samples", "20", "--client-eval", "off", "--seed", "0",
               "--fresh", "--out", str(out / f"ours-{size}")]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        _, ours_wall, ours_mem = run(cmd, out / f"ours-{size}.log")
        summary = json.loads((out / f"ours-{size}" / "summary.json").read_text())
        ours = statistics.median(r["seconds"] for r in summary["rounds"][1:])
        rows.append((size, ours, bare, ours_mem, bare_mem))
        print(f"{size:>7,d} clients: per round ours {ours:.2f}s, bare {bare:.2f}s, ratio {ours / bare:.2f} "
              f"(target <= 1.5); peak memory ours {ours_mem:.2f} GB, bare {bare_mem:.2f} GB "
              f"(wall {ours_wall:.0f}s / {bare_wall:.0f}s)", flush=True)
    print("README: scale " + "; ".join(
        f"{s:,d}: {o:.2f}/{b:.2f} s per round ({o / b:.2f}x), {m:.2f} GB" for s, o, b, m, _ in rows))


if __name__ == "__main__":
    main()

"""Compressed split-learning exchanges: payload bytes and accuracy per codec, side by side.

    python bench/compression.py [--rounds 20] [--k 16] [--data-dir ../shared/data]

The task: the vertical MNIST example (left/right halves, 10 classes, batch 128, 5,000
training and 10,000 test images) in the Ray simulation, with the host's ``exchange_codecs``
set per run (``vertical_variants.ConfigurableMnistHost``); every run has the same seed.
Bytes are the arrays' bytes in the payloads (codec parts included: int8 scales, top-k
positions and shapes), not the wire's, per training epoch in each direction (median over
rounds; the test features, sent on test rounds only, are shown apart).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import ROOT, default_data_dir, run_command
from vertical_variants import ConfigurableMnistHost, median_stat, task_file

COLLABORATOR = "simulations/mnist/vertical_collaborator.py"
TARGET_RATIO, TARGET_PP = 3.9, 0.5

# name: exchange_codecs
SETTINGS: dict[str, Any] = {
    "float32": None,
    "fp16": "fp16",
    "int8": "int8",
    "topk:0.25": "topk:0.25",
    "topk:0.1": "topk:0.1",
    "topk:0.05": "topk:0.05",
    "int8 up, topk:0.1 down": {"features": "int8", "gradients": "topk:0.1"},
}


def run_setting(args: argparse.Namespace, name: str, out: Path) -> dict[str, Any]:
    slug = name.replace(" ", "_").replace(":", "").replace(",", "")
    host = task_file(out / "tasks", f"{slug}_host", ConfigurableMnistHost, exchange_codecs=SETTINGS[name],
                     schedule_timeout=300)  # Ray's actors start slowly on a busy machine
    cmd = ["-m", "alphafed_flwr.simulation", "--host", host, "--collaborator", COLLABORATOR,
           "--task-id", "vertical-mnist", "--rounds", str(args.rounds), "--batches-per-exchange", str(args.k),
           "--seed", "0", "--fresh", "--out", str(out / slug)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    run_command(cmd, out / f"{slug}.log", timeout=3600)
    return json.loads((out / slug / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--k", type=int, default=16, help="batches per exchange (default 16: 3 exchanges per epoch)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--out", default="runs/bench/compression")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    names = ["float32", *[n for n in args.settings if n != "float32"]]
    print(f"data: {args.data_dir or 'offline MNIST subset'}; vertical MNIST, {args.rounds} rounds, K={args.k}, "
          "batch 128; array bytes per training epoch", flush=True)
    rows: dict[str, tuple[float, float, float]] = {}
    for name in names:
        summary = run_setting(args, name, out)
        up, down = median_stat(summary, "bytes-features"), median_stat(summary, "bytes-gradients")
        test = max(r["stats"].get("bytes-test-features", 0) for r in summary["rounds"])
        accuracy = summary["final_test"]["accuracy"]
        rows[name] = (accuracy, up, down)
        base_acc, base_up, base_down = rows["float32"]
        print(f"{name:<24s}: accuracy {accuracy:.4f} ({100 * (accuracy - base_acc):+.2f} pp); features "
              f"{up / 1e6:.3f} MB ({base_up / up:.2f}x less), gradients {down / 1e6:.3f} MB ({base_down / down:.2f}x "
              f"less), both {(base_up + base_down) / (up + down):.2f}x; test features {test / 1e6:.2f} MB per test",
              flush=True)
    base_acc, base_up, base_down = rows["float32"]
    line = f"README: compression, vertical MNIST {args.rounds} rounds K={args.k}: float32 {100 * base_acc:.2f}%"
    for name in names[1:]:
        acc, up, down = rows[name]
        line += f"; {name} {(base_up + base_down) / (up + down):.2f}x {100 * (acc - base_acc):+.2f} pp"
    if "int8" in rows:
        acc, up, down = rows["int8"]
        ratio, delta = (base_up + base_down) / (up + down), 100 * (acc - base_acc)
        met = ratio >= TARGET_RATIO and abs(delta) <= TARGET_PP
        print(f"\nint8 both ways: {ratio:.2f}x fewer bytes, {delta:+.2f} pp (target >= {TARGET_RATIO}x within "
              f"{TARGET_PP} pp): {'met' if met else 'not met'}")
    print(line)


if __name__ == "__main__":
    main()

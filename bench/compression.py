"""Compressed split-learning exchanges: payload bytes and accuracy per codec, side by side.

    python bench/compression.py [--rounds 20] [--simulation float32 int8] [--data-dir ../shared/data]

The task: the vertical MNIST example (left/right halves, 10 classes, batch 128, Adam,
5,000 training and 10,000 test images, seed 0). Every codec setting trains in this process
exactly as K=1 split learning does (``vertical_variants.split_in_process``: features and
gradients go through the same ``pack``/``unpack`` as the adapters, test features too);
``--simulation NAME ...`` also runs those settings through the Flower simulation
(``ConfigurableMnistHost`` with ``exchange_codecs``, K=16) and prints the bytes the
strategy counted. Bytes are the arrays' bytes in the payloads (codec parts included: int8
scales, top-k positions and shapes), not the wire's, per training epoch in each direction.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from common import ROOT, default_data_dir, run_command
from vertical_variants import ConfigurableMnistHost, median_stat, split_in_process, task_file

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
PER_DIRECTION = "int8 up, topk:0.1 down"


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
    parser.add_argument("--settings", nargs="+", default=[n for n in SETTINGS if n != PER_DIRECTION],
                        choices=list(SETTINGS), help=f"codec settings (default: all but '{PER_DIRECTION}')")
    parser.add_argument("--simulation", nargs="*", default=[], choices=list(SETTINGS),
                        help="settings to run through the Flower simulation as well")
    parser.add_argument("--k", type=int, default=16, help="batches per exchange in --simulation runs")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--out", default="runs/bench/compression")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = (ROOT / args.out).resolve()
    names = ["float32", *[n for n in args.settings if n != "float32"]]
    print(f"data: {args.data_dir or 'offline MNIST subset'}; vertical MNIST, {args.rounds} rounds, batch 128; "
          "array bytes per training epoch; in process, as K=1 split learning", flush=True)
    rows: dict[str, tuple[float, float, float]] = {}
    for name in names:
        result = split_in_process(args.rounds, args.data_dir, False, codecs=SETTINGS[name])
        last = result["rounds"][-1]
        rows[name] = (result["accuracy"], last["bytes-features"], last["bytes-grads"])
        print(row(name, rows[name], rows["float32"]), flush=True)
    for name in args.simulation:
        summary = run_setting(args, name, out)
        sim = (summary["final_test"]["accuracy"], median_stat(summary, "bytes-features"),
               median_stat(summary, "bytes-gradients"))
        print(f"Flower simulation, K={args.k}: {row(name, sim, rows['float32'])}", flush=True)
    base_acc, base_up, base_down = rows["float32"]
    line = f"README: compression, vertical MNIST {args.rounds} rounds: float32 {100 * base_acc:.2f}%"
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


def row(name: str, result: tuple[float, float, float], base: tuple[float, float, float]) -> str:
    """One line: accuracy and bytes each way against float32."""
    (accuracy, up, down), (base_acc, base_up, base_down) = result, base
    return (f"{name:<24s}: accuracy {accuracy:.4f} ({100 * (accuracy - base_acc):+.2f} pp); features "
            f"{up / 1e6:.3f} MB/epoch ({base_up / up:.2f}x less), gradients {down / 1e6:.3f} MB/epoch "
            f"({base_down / down:.2f}x less), both {(base_up + base_down) / (up + down):.2f}x")


if __name__ == "__main__":
    main()

"""Secure HeteroNN (CKKS projection layer) against the plain protocol on vertical MNIST
(left/right halves, 5,000 training images, batch 128, 20-dimensional features projected
20 -> 20), side by side in one run.

    python bench/secure_vertical.py [--rounds 3] [--data-dir ../shared/data] [--deployment]

1. Per-batch cost of each protocol step (``alphafed_flwr.secure_layer`` on the real shapes,
   median of ``--repeats``), with the bytes each step puts on the wire.
2. Simulation: the plain twin (``bench/secure_vertical_plain.py``: same models, batches and
   projections, the collaborator's features in the clear) and the secure example
   (``simulations/mnist/secure_vertical_*.py``), ``--rounds`` rounds each: epoch time
   (median over rounds without a test), exchanges and bytes per exchange, final accuracy.
3. ``--deployment``: the secure example on loopback (host and collaborator as separate
   processes), ``--deploy-rounds`` rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import ROOT, default_data_dir, run_command

SECURE = ("simulations/mnist/secure_vertical_host.py", "simulations/mnist/secure_vertical_collaborator.py")
PLAIN = ("bench/secure_vertical_plain.py:host", "bench/secure_vertical_plain.py:collaborator")


def step_costs(repeats: int, batch: int = 128, n: int = 20, m: int = 20) -> dict[str, tuple[float, int]]:
    """Median seconds and wire bytes of each step of one batch."""
    from alphafed_flwr import secure_layer as sl  # pylint: disable=import-outside-toplevel

    params = sl.CkksParams()
    keys = sl.CollaboratorKeys.create(params)
    context = sl.public_context(keys.public_bytes())
    plan = sl.FeaturePlan.make(batch, n, m, params.slots)
    rng = np.random.default_rng(0)
    alpha, w_h, share = rng.normal(size=(batch, n)), rng.uniform(-1, 1, (n, m)), rng.uniform(-1, 1, (n, m))
    delta = rng.normal(size=(batch, m)) / batch
    times: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}

    def timed(name: str, fn, *args):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        out = fn(*args)
        times.setdefault(name, []).append(time.perf_counter() - start)
        return out

    for _ in range(repeats):
        cts = timed("1 collaborator: encrypt features [alpha]", sl.encrypt_features, keys, alpha, plan)
        fwd, state = timed("2 host: forward [alpha W_h + masks]", sl.host_forward, context, params, cts, w_h, plan)
        part = timed("3 collaborator: decrypt forward + alpha E", sl.collaborator_forward, keys, fwd, alpha, share, plan)
        share_ct = timed("4 collaborator: encrypt share [E]", sl.encrypt_share, keys, share)
        state.share_ct = sl.load_vector(context, share_ct, "share", params.slots)
        timed("5 host: unmask z", sl.unmask_projection, part, state, params, "z")
        wgrad, fgrad, _ = timed("6 host: backward [grad W + eps_g], [delta W^T]", sl.host_backward, context, params, state, delta, w_h)
        timed("7 collaborator: decrypt gradients", sl.collaborator_backward, keys, wgrad, fgrad, plan)
        sizes.update({
            "1 collaborator: encrypt features [alpha]": sum(map(len, cts)),
            "2 host: forward [alpha W_h + masks]": sum(map(len, fwd)),
            "3 collaborator: decrypt forward + alpha E": part.nbytes,
            "4 collaborator: encrypt share [E]": len(share_ct),
            "5 host: unmask z": 0,
            "6 host: backward [grad W + eps_g], [delta W^T]": sum(map(len, wgrad)) + sum(map(len, fgrad)),
            "7 collaborator: decrypt gradients": 0,
        })
    return {name: (statistics.median(values), sizes[name]) for name, values in times.items()}


def simulate(pair: tuple[str, str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = ["-m", "alphafed_flwr.simulation", "--host", pair[0], "--collaborator", pair[1],
           "--rounds", str(args.rounds), "--seed", "0", "--fresh", "--out", str(out)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    run_command(cmd, out.with_suffix(".log"), timeout=7200)
    return json.loads((out / "summary.json").read_text())


def deploy(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The secure example on loopback: host and collaborator as separate processes."""
    from alphafed_flwr.deploy.processes import free_port  # pylint: disable=C0415

    address = f"127.0.0.1:{free_port()}"
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    out.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".collaborator.log"), "w", encoding="utf-8") as log:
        client = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "alphafed_flwr.client", "--server", address, "--insecure",
             "--collaborator", SECURE[1], "--out", str(out / "collaborator"), *data],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        run_command(["-m", "alphafed_flwr.server", "--host", SECURE[0], "--collaborators", "1",
                     "--rounds", str(args.deploy_rounds), "--address", address, "--out", str(out),
                     "--insecure", "--fresh", *data], out.with_suffix(".log"), timeout=7200)
    finally:
        client.terminate()
        client.wait(60)
    return json.loads((out / "summary.json").read_text())


def figures(summary: dict[str, Any]) -> dict[str, float]:
    """Epoch seconds (median over untested rounds), exchanges and bytes per exchange, accuracy."""
    rows = [r for r in summary["rounds"] if not r.get("test")] or summary["rounds"]
    stats = [r["stats"] for r in rows]
    exchanges = statistics.median(s["exchanges"] for s in stats)
    to_host = statistics.median(s.get("bytes-to-host", s.get("bytes-features", 0)) for s in stats)
    to_collab = statistics.median(s.get("bytes-to-collaborators", s.get("bytes-gradients", 0)) for s in stats)
    return {
        "epoch": statistics.median(r["seconds"] for r in rows),
        "exchanges": exchanges,
        "to-host": to_host / exchanges,
        "to-collaborator": to_collab / exchanges,
        "crypto": statistics.median(s.get("host-crypto-seconds", 0.0) for s in stats),
        "accuracy": summary["final_test"].get("accuracy", float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--deployment", action="store_true")
    parser.add_argument("--deployment-only", action="store_true", help="skip the step costs and simulations")
    parser.add_argument("--deploy-rounds", type=int, default=2)
    parser.add_argument("--out", default="runs/bench/secure_vertical")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    print(f"data: {args.data_dir or 'offline MNIST subset'}; {args.rounds} rounds, batch 128, 20 -> 20 projections", flush=True)
    if args.deployment_only:
        f = figures(deploy(args, out / "deploy"))
        print(f"deployment secure: epoch {f['epoch']:.1f}s, {f['exchanges']:.0f} exchanges, accuracy {f['accuracy']:.4f}")
        return
    print("per-batch cost by step (B=128, n=m=20, N=8192, median of", args.repeats, "):")
    costs = step_costs(args.repeats)
    for name, (seconds, size) in costs.items():
        print(f"  {name:<50s} {seconds * 1000:7.1f} ms  {size / 1e6:6.2f} MB", flush=True)
    batch_total = sum(s for s, _ in costs.values())
    print(f"  {'total':<50s} {batch_total * 1000:7.1f} ms  {sum(b for _, b in costs.values()) / 1e6:6.2f} MB")
    plain, secure = (figures(simulate(pair, args, out / name)) for pair, name in ((PLAIN, "plain"), (SECURE, "secure")))
    for name, f in (("plain ", plain), ("secure", secure)):
        print(f"simulation {name}: epoch {f['epoch']:.1f}s, {f['exchanges']:.0f} exchanges, per exchange "
              f"{f['to-collaborator'] / 1e3:.0f} kB to the collaborator / {f['to-host'] / 1e3:.0f} kB to the host; "
              f"accuracy after {args.rounds} rounds {f['accuracy']:.4f}", flush=True)
    ratio = secure["epoch"] / plain["epoch"]
    print(f"secure/plain: epoch {ratio:.1f}x, accuracy {100 * (secure['accuracy'] - plain['accuracy']):+.2f} pp; "
          f"secure epoch {secure['epoch'] / 60:.1f} min (target <= 10 min)")
    line = (f"README: secure HeteroNN MNIST {args.rounds} rounds: secure epoch {secure['epoch']:.0f}s vs plain "
            f"{plain['epoch']:.1f}s ({ratio:.0f}x), {secure['exchanges']:.0f} vs {plain['exchanges']:.0f} exchanges, "
            f"{(secure['to-host'] + secure['to-collaborator']) / 1e6:.2f} MB vs "
            f"{(plain['to-host'] + plain['to-collaborator']) / 1e6:.3f} MB per exchange; accuracy "
            f"{100 * secure['accuracy']:.2f}% vs {100 * plain['accuracy']:.2f}%; crypto per batch {batch_total:.2f}s")
    if args.deployment:
        start = time.monotonic()
        f = figures(deploy(args, out / "deploy"))
        print(f"deployment secure: epoch {f['epoch']:.1f}s, {f['exchanges']:.0f} exchanges, accuracy "
              f"{f['accuracy']:.4f}; run {time.monotonic() - start:.0f}s", flush=True)
        line += f"; loopback deployment {f['epoch']:.0f}s/epoch"
    print(line)


if __name__ == "__main__":
    main()

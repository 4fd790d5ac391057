"""Privacy benchmark: DP-FedAvg accuracy against epsilon, and SecAgg+ against plain FedAvg.

    python bench/privacy.py [--data-dir ../shared/data] [--rounds 5] [--z 0.01 0.03 0.1]

Part 1: ``simulations/mnist/dp_fedavg.py`` with 10 clients (IID, 500 images each), every
client every round, S=1, for each noise multiplier z, next to the same task without DP
(z=0: plain FedAvg with equal weights); final test accuracy on the 10,000 test images and
the epsilon spent at delta=1e-5 (RDP, no subsampling amplification).

Part 2: ``simulations/mnist/secure_fedavg.py`` (t=2) against the FedAvg example, 3 clients:
seconds and bytes per round (every message both ways, serialized as Flower sends them).

Both parts run the real ServerApp and ClientApp code on an in-process grid (no Ray, no
network): the figures are the protocol's cost, not the transport's.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common import ROOT, default_data_dir
from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from alphafed_flwr import compat
from alphafed_flwr.adapters.horizontal_client import ClientSettings, horizontal_client_app
from alphafed_flwr.adapters.horizontal_server import HorizontalServer, ServerSettings
from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.loader import load_object
from alphafed_flwr.api.fed_avg import FedAvgScheduler


class LocalGrid(Grid):
    """ClientApps called in this process; every message copied and its bytes counted."""

    def __init__(self, app: Any, nodes: int) -> None:
        self.app = app
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={"partition-id": n - 1, "num-partitions": nodes},
                       state=RecordDict(), run_config={})
            for n in range(1, nodes + 1)
        }
        self.replies: dict[str, Message] = {}
        self.bytes = 0

    def set_run(self, run: Any) -> None:  # noqa: D102
        pass

    @property
    def run(self) -> Any:  # noqa: D102
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # noqa: D102
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            msg.content = copy.deepcopy(msg.content)
            self.bytes += compat.message_bytes(msg)
            try:
                reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # noqa: BLE001 - an error reply, as in Flower
                reply = Message(Error(code=0, reason=str(exc)), reply_to=msg)
            self.bytes += compat.message_bytes(reply)
            self.replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:  # noqa: D102
        return self.pull_messages(self.push_messages(messages))


def run(scheduler: FedAvgScheduler, nodes: int, data_dir: str | None, rounds: int,
        samples: int | None = None) -> tuple[dict, LocalGrid]:
    """One run (IID partitions, or ``samples`` images per client); returns summary.json's
    content and the grid (bytes)."""
    out = Path(tempfile.mkdtemp(prefix="bench-privacy-"))
    template = PickledTemplate(scheduler)
    partition = "iid" if samples is None else "sample"
    settings = ClientSettings(out_dir=str(out), data_dir=data_dir, partition=partition, seed=0,
                              samples=samples or 0)
    grid = LocalGrid(horizontal_client_app(lambda _: template, lambda _: settings), nodes)
    trainer = template.new_instance() if scheduler.involve_aggregator else None
    server = HorizontalServer(template.new_instance(), ServerSettings(
        out_dir=out, rounds=rounds, data_dir=None if data_dir is None else Path(data_dir), seed=0,
        client_eval="off"), trainer=trainer)  # type: ignore[arg-type]
    return server.run(grid), grid


def task(path: str, **overrides: Any) -> FedAvgScheduler:
    """The example's scheduler with ``overrides`` applied (attributes)."""
    scheduler = load_object(str(ROOT / path), FedAvgScheduler).obj
    for key, value in overrides.items():
        setattr(scheduler, key, value)
    return scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--z", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--secure-rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=None,
                        help="images per client in part 1 (default: an IID share of the training set)")
    args = parser.parse_args()
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0

    share = "an IID share" if args.samples is None else f"{args.samples} images"
    print(f"Part 1: DP-FedAvg, {args.clients} clients ({share} each), {args.rounds} rounds, S=1, delta=1e-5")
    rows = []
    baseline = task("simulations/mnist/fedavg.py", min_clients=args.clients, log_rounds=0)
    summary, _ = run(baseline, args.clients, args.data_dir, args.rounds, args.samples)  # unweighted is equal here (IID)
    rows.append(("none (FedAvg)", float("inf"), summary["final_test"]["accuracy"]))
    for z in args.z:
        summary, _ = run(task("simulations/mnist/dp_fedavg.py", z=z, log_rounds=0), args.clients, args.data_dir,
                         args.rounds, args.samples)
        rows.append((f"z={z:g}", summary["privacy"]["epsilon"], summary["final_test"]["accuracy"]))
    print(f"  {'noise':>14} {'epsilon':>12} {'accuracy':>9}")
    for name, eps, acc in rows:
        print(f"  {name:>14} {eps:>12.4g} {acc:>9.2%}")

    print(f"Part 2: SecAgg+ (t=2) vs plain FedAvg, 3 clients, {args.secure_rounds} rounds")
    figures = {}
    for name, path in (("plain", "simulations/mnist/fedavg.py"), ("secagg", "simulations/mnist/secure_fedavg.py")):
        start = time.monotonic()
        summary, grid = run(task(path, log_rounds=0), 3, args.data_dir, args.secure_rounds)
        seconds = [r["seconds"] for r in summary["rounds"]][1:] or [time.monotonic() - start]
        figures[name] = (sum(seconds) / len(seconds), grid.bytes / args.secure_rounds,
                         summary["final_test"]["accuracy"])
        print(f"  {name:>7}: {figures[name][0]:.2f} s/round (rounds 2+), {figures[name][1] / 1e6:.2f} MB/round, "
              f"accuracy {figures[name][2]:.2%}")
    time_ratio = figures["secagg"][0] / figures["plain"][0]
    byte_ratio = figures["secagg"][1] / figures["plain"][1]
    dp = "; ".join(f"{n}: eps {e:.3g}, {a:.2%}" for n, e, a in rows)
    print(f"README: DP-FedAvg {args.clients} clients x {args.rounds} rounds: {dp} | SecAgg+ vs FedAvg "
          f"(3 clients): {time_ratio:.2f}x time, {byte_ratio:.2f}x bytes per round "
          f"(accuracy {figures['secagg'][2]:.2%} vs {figures['plain'][2]:.2%})")


if __name__ == "__main__":
    sys.exit(main())

"""Bare Flower at scale: a trivial ClientApp echoing a 100x10 Linear, Flower's FedAvg
sampling 10 nodes a round (the anchor of ``bench/scale.py``).

    python bench/bare_flower_scale.py --nodes 100000 --rounds 5

Prints one JSON line: the seconds of each round.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Echo the arrays."""
    del context
    return Message(
        RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg
    )


class TimedFedAvg(FedAvg):
    """FedAvg that records when each round starts."""

    starts: list[float] = []

    def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001, ANN201
        self.starts.append(time.monotonic())
        return super().configure_train(server_round, arrays, config, grid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server = ServerApp()
    times: list[float] = []

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(fraction_train=10 / args.nodes, fraction_evaluate=0.0,
                               min_train_nodes=10, min_available_nodes=10)
        strategy.start(grid, ArrayRecord(torch.nn.Linear(100, 10).state_dict()), num_rounds=args.rounds)
        end = time.monotonic()
        marks = strategy.starts + [end]
        times.extend(b - a for a, b in zip(marks[:-1], marks[1:]))

    run_simulation(server, app, num_supernodes=args.nodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    print(json.dumps({"round_seconds": times}))


if __name__ == "__main__":
    import bare_flower_scale  # Ray actors import the ClientApp by name

    bare_flower_scale.main()

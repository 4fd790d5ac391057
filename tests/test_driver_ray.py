"""Both directions on Flower's Ray simulation engine (tiny data, few rounds).

- Our strategy inside a plain Flower ServerApp written as in Flower's templates.
- Flower's strategies (FedAdam, Krum) running an AlphaFed task under our round driver,
  FedAdam resumed with its server state.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from tasks import write_fedavg

from alphafed_flwr.adapters.outputs import Checkpoint
from alphafed_flwr.cli import run_cli
from alphafed_flwr.simulation.__main__ import main
from alphafed_flwr.simulation.engine import run_ray_simulation
from alphafed_flwr.strategies import FedAvgWithClientLimits

pytestmark = pytest.mark.timeout(600)


def test_a_plain_flower_serverapp_runs_our_strategy() -> None:
    results: dict[str, object] = {}
    app = ServerApp()

    @app.main()
    def main_(grid: Grid, context: Context) -> None:  # as in Flower's app templates
        strategy = FedAvgWithClientLimits(min_clients=2, max_clients=2, schedule_timeout=60, seed=0)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(3, np.float32)]), num_rounds=2)
        results["arrays"] = result.arrays.to_numpy_ndarrays()[0]
        results["train"] = dict(result.train_metrics_clientapp)
        results["evaluate"] = dict(result.evaluate_metrics_clientapp)

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        (weights,) = msg.content["arrays"].to_numpy_ndarrays()
        step = float(context.node_config["partition-id"]) + 1  # the two nodes move by 1 and by 2
        content = RecordDict({"arrays": ArrayRecord([weights + step]),
                              "metrics": MetricRecord({"num-examples": 10})})
        return Message(content, reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"loss": 1.0, "num-examples": 5})}), reply_to=msg)

    run_ray_simulation(app, client, 2)
    np.testing.assert_allclose(results["arrays"], np.full(3, 3.0))  # 2 rounds of mean(1, 2)
    assert sorted(results["train"]) == [1, 2] and results["train"][2]["num-results"] == 2
    assert results["evaluate"][2]["loss"] == pytest.approx(1.0)


def test_flower_strategies_run_an_alphafed_task_and_fedadam_resumes(tmp_path: Path, tiny_mnist: Path) -> None:
    task = write_fedavg(tmp_path, args="max_rounds=3, log_rounds=1")
    out = tmp_path / "adam"
    common = [str(task), "--num-clients", "3", "--seed", "1", "--data-dir", str(tiny_mnist),
              "--client-eval", "off"]
    assert run_cli(main, [*common, "--rounds", "2", "--out", str(out), "--strategy", "fedadam",
                          "--strategy-arg", "eta=0.01"]) == 0
    arrays, meta = Checkpoint(out / "checkpoint").load()  # type: ignore[misc]
    assert meta["round"] == 2 and meta["strategy"] == "fedadam"
    m_t = {k: v for k, v in arrays.items() if k.startswith("strategy:m_t/")}
    assert m_t and all(np.any(v != 0) for k, v in m_t.items() if "weight" in k)
    assert run_cli(main, [*common, "--rounds", "3", "--out", str(out), "--strategy", "fedadam",
                          "--strategy-arg", "eta=0.01"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_round"] == 2
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert summary["config"]["strategy"] == "fedadam" and summary["config"]["strategy_args"] == {"eta": 0.01}
    assert summary["final_test"]["accuracy"] > 0.2

    krum = tmp_path / "krum"
    assert run_cli(main, [*common, "--rounds", "1", "--out", str(krum), "--strategy", "krum"]) == 0
    summary = json.loads((krum / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"][0]["train"]["num-results"] == 3


def test_bad_strategy_choices_fail_before_ray_starts(tmp_path: Path, tiny_mnist: Path) -> None:
    task = write_fedavg(tmp_path)
    base = [str(task), "--data-dir", str(tiny_mnist), "--out", str(tmp_path / "x")]
    assert run_cli(main, [*base, "--strategy", "bulyan", "--strategy-arg", "num_malicious_nodes=1"]) == 2
    assert run_cli(main, [*base, "--strategy", "qfedavg"]) == 2
    assert run_cli(main, [*base, "--strategy", "fedadam", "--strategy-arg", "etta=1"]) == 2
    assert not (tmp_path / "x" / "summary.json").exists()

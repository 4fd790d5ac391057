"""FedAvg/FedSGD adapters in-process: client messages, optimizer state, resume, aggregator."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fakegrid import FakeGrid
from flwr.app import Context, Message, MetricRecord
from tasks import write_fedavg

from alphafed_flwr.adapters import templates
from alphafed_flwr.adapters.horizontal_client import ClientSettings, horizontal_client_app
from alphafed_flwr.adapters.horizontal_server import HorizontalServer, ServerSettings
from alphafed_flwr.adapters.records import OPT_ARRAYS
from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.api import FedAvgScheduler
from alphafed_flwr.loader import load_object


def setup(tmp_path: Path, tiny_mnist: Path, clients: int = 2, args: str = "max_rounds=2, log_rounds=1",
          **client_kwargs) -> tuple[PickledTemplate, FakeGrid]:
    sched = load_object(str(write_fedavg(tmp_path, args=args)), FedAvgScheduler).obj
    template = PickledTemplate(sched)
    settings = ClientSettings(task_id="tiny", out_dir=str(tmp_path / "out"), data_dir=str(tiny_mnist),
                              partition="iid", seed=0, **client_kwargs)
    app = horizontal_client_app(lambda ctx: template, lambda ctx: settings)
    grid = FakeGrid(
        {n: (lambda m, c: app(m, c)) for n in range(1, clients + 1)},
        {n: {"partition-id": n - 1, "num-partitions": clients} for n in range(1, clients + 1)},
    )
    grid.before_message = templates._instances.clear  # every message in a fresh process
    return template, grid


def server(template: PickledTemplate, tmp_path: Path, tiny_mnist: Path, **kwargs) -> HorizontalServer:
    settings = ServerSettings(out_dir=tmp_path / "out", task_id="tiny", data_dir=tiny_mnist, seed=0, **kwargs)
    involve = template.new_instance().involve_aggregator
    return HorizontalServer(template.new_instance(), settings, template.new_instance() if involve else None)


def test_a_run_writes_every_output_and_keeps_optimizer_state(tmp_path: Path, tiny_mnist: Path) -> None:
    template, grid = setup(tmp_path, tiny_mnist)
    summary = server(template, tmp_path, tiny_mnist).run(grid)
    out = tmp_path / "out"
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["final_test"]["accuracy"] > 0.3  # tiny data, two rounds: well above chance
    rows = list(csv.DictReader((out / "metrics" / "test_results.csv").open()))
    assert [r["round"] for r in rows] == ["1", "2"]
    client_rows = list(csv.DictReader((out / "metrics" / "clients" / "client-0.csv").open()))
    # each client tests the final global model on its (here: the same) 100 test images
    assert [r["round"] for r in client_rows] == ["2"]
    assert float(client_rows[-1]["accuracy"]) == pytest.approx(summary["final_test"]["accuracy"])
    assert float(client_rows[-1]["loss"]) == pytest.approx(float(rows[-1]["loss"]))
    for name in ("model.pt", "summary.json", "checkpoint/checkpoint.npz"):
        assert (out / name).exists()
    assert list((out / "tensorboard" / "server").glob("events*"))
    # momentum carried over on each node, flattened in context.state
    assert all(OPT_ARRAYS in ctx.state.array_records for ctx in grid.contexts.values())
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(train) == 4


def test_reset_optimizer_keeps_nothing(tmp_path: Path, tiny_mnist: Path) -> None:
    template, grid = setup(tmp_path, tiny_mnist, reset_optimizer=True)
    server(template, tmp_path, tiny_mnist).run(grid)
    assert not any(OPT_ARRAYS in ctx.state.array_records for ctx in grid.contexts.values())


def test_the_aggregator_trains_as_one_more_participant(tmp_path: Path, tiny_mnist: Path) -> None:
    template, grid = setup(tmp_path, tiny_mnist, args="max_rounds=1, involve_aggregator=True")
    summary = server(template, tmp_path, tiny_mnist).run(grid)
    train = summary["rounds"][0]["train"]
    assert train["num-results"] == 3  # two clients and the server
    assert train["num-examples"] == 240 + 240  # the clients' partitions plus the server's own data


def test_a_restarted_run_resumes_from_its_last_checkpoint(tmp_path: Path, tiny_mnist: Path) -> None:
    template, grid = setup(tmp_path, tiny_mnist, args="max_rounds=3")
    first = server(template, tmp_path, tiny_mnist)
    original = first.on_round_end

    def crash_in_round_2(server_round, arrays, metrics):  # noqa: ANN001, ANN202
        if server_round == 2:
            raise KeyboardInterrupt("server killed")
        return original(server_round, arrays, metrics)

    first.on_round_end = crash_in_round_2  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        first.run(grid)
    _, grid = setup(tmp_path, tiny_mnist, args="max_rounds=3")
    summary = server(template, tmp_path, tiny_mnist).run(grid)
    assert summary["resumed_from_round"] == 1
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    rows = list(csv.DictReader((tmp_path / "out" / "metrics" / "test_results.csv").open()))
    assert [r["round"] for r in rows] == ["1", "3"]  # round 1 kept; round 3 is the last (tested)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["status"] == "completed"


STOPS_EARLY = '''
from alphafed.scheduler import TaskComplete


class StopsEarly(TinyTask):
    def is_task_finished(self):
        if self.current_round >= 2:
            raise TaskComplete("enough")
        return False


scheduler = StopsEarly('''


def test_task_complete_ends_the_run_early(tmp_path: Path, tiny_mnist: Path) -> None:
    path = write_fedavg(tmp_path, name="early.py", args="max_rounds=5, log_rounds=4")
    path.write_text(path.read_text().replace("\nscheduler = TinyTask(", STOPS_EARLY))
    sched = load_object(str(path), FedAvgScheduler).obj
    assert type(sched).__name__ == "StopsEarly"
    template = PickledTemplate(sched)
    _, grid = setup(tmp_path, tiny_mnist)
    app = horizontal_client_app(lambda ctx: template, lambda ctx: ClientSettings(
        task_id="tiny", out_dir=str(tmp_path / "out"), data_dir=str(tiny_mnist), partition="iid", seed=0))
    grid.handlers = {n: (lambda m, c: app(m, c)) for n in grid.handlers}
    summary = server(template, tmp_path, tiny_mnist).run(grid)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert [m.metadata.message_type for m in grid.sent].count("train") == 2 * 2
    rows = list(csv.DictReader((tmp_path / "out" / "metrics" / "test_results.csv").open()))
    assert [r["round"] for r in rows] == ["1", "2"]  # the last round run is tested


def _drop_a_key(reply: Message) -> None:
    arrays = reply.content["arrays"]
    del arrays[next(iter(arrays.keys()))]


def _set_weight(value: object) -> Callable[[Message], None]:
    def change(reply: Message) -> None:
        metrics = {k: v for k, v in reply.content["metrics"].items() if k != "num-examples"}
        if value is not None:
            metrics["num-examples"] = value
        reply.content["metrics"] = MetricRecord(metrics)

    return change


def _crash(reply: Message) -> None:
    raise RuntimeError("client crashed")


BAD_UPDATES = {  # node: (how its train reply is spoiled, what the log says)
    2: (_drop_a_key, "keys differ"),
    3: (_set_weight(None), "num-examples"),
    4: (_set_weight(0), "must be positive"),
    5: (_set_weight(-7), "must be positive"),
    6: (_crash, "the client failed"),
}


def test_bad_updates_and_the_servers_own_are_rejected_and_never_averaged(
    tmp_path: Path, tiny_mnist: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the adapters: one honest client, five spoiled replies, and a server whose own
    update (``involve_aggregator``) is NaN; the new global model is the honest update."""
    template, grid = setup(tmp_path, tiny_mnist, clients=6, args="max_rounds=1, involve_aggregator=True")
    honest: dict[str, np.ndarray] = {}

    def spoil(node: int) -> Callable[[Message, Context], Message]:
        inner = grid.handlers[node]

        def handler(message: Message, context: Context) -> Message:
            reply = inner(message, context)
            if message.metadata.message_type == "train":
                if node in BAD_UPDATES:
                    BAD_UPDATES[node][0](reply)
                else:
                    honest.update({k: v.numpy() for k, v in reply.content["arrays"].items()})
            return reply

        return handler

    grid.handlers = {node: spoil(node) for node in grid.handlers}
    srv = server(template, tmp_path, tiny_mnist)
    trainer = srv.trainer
    # involve_aggregator=True: the server holds a second instance of the task that trains
    assert isinstance(trainer, type(srv.scheduler)) and trainer is not srv.scheduler
    train_locally = trainer.run_local_round

    def nan_update() -> int:
        count = train_locally()
        with torch.no_grad():
            next(trainer.model.parameters()).fill_(float("nan"))
        return count

    trainer.run_local_round = nan_update  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        summary = srv.run(grid)
    assert summary["status"] == "completed"
    assert summary["rounds"][0]["train"]["num-results"] == 1
    final = torch.load(tmp_path / "out" / "model.pt")
    assert set(final) == set(honest)
    for key, value in honest.items():
        np.testing.assert_allclose(final[key].numpy(), value, rtol=1e-6)
    rejected = "\n".join(r.getMessage() for r in caplog.records if "Rejected" in r.getMessage())
    for _, reason in BAD_UPDATES.values():
        assert reason in rejected, reason
    assert "the server's own update" in rejected and "NaN" in rejected

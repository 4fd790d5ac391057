"""A server killed mid-run resumes with the strategy's server state (in-process nodes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fakegrid import FakeGrid
from tasks import write_fedavg

from alphafed_flwr.adapters import templates
from alphafed_flwr.adapters.horizontal_client import ClientSettings, horizontal_client_app
from alphafed_flwr.adapters.horizontal_server import HorizontalServer, ServerSettings
from alphafed_flwr.adapters.outputs import Checkpoint
from alphafed_flwr.adapters.templates import PickledTemplate
from alphafed_flwr.api import FedAvgScheduler
from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.loader import load_object

STRATEGIES = {
    "fedadam": ({"eta": 0.01}, ("m_t", "v_t")),
    "fedavgm": ({"server_momentum": 0.9, "server_learning_rate": 0.5}, ("momentum_vector",)),
}


def grid_for(template: PickledTemplate, out: Path, tiny_mnist: Path) -> FakeGrid:
    # reset_optimizer: a client's update depends only on the global state, its data and the seed
    settings = ClientSettings(task_id="tiny", out_dir=str(out), data_dir=str(tiny_mnist),
                              partition="iid", seed=0, reset_optimizer=True)
    app = horizontal_client_app(lambda ctx: template, lambda ctx: settings)
    grid = FakeGrid({n: (lambda m, c: app(m, c)) for n in (1, 2)},
                    {n: {"partition-id": n - 1, "num-partitions": 2} for n in (1, 2)})
    grid.before_message = templates._instances.clear
    return grid


def run(template: PickledTemplate, out: Path, tiny_mnist: Path, name: str, crash_at: int | None = None,
        forget_state: bool = False) -> dict[str, torch.Tensor]:
    settings = ServerSettings(out_dir=out, task_id="tiny", data_dir=tiny_mnist, seed=0, client_eval="off",
                              strategy=name, strategy_args=STRATEGIES[name][0])
    server = HorizontalServer(template.new_instance(), settings)
    if forget_state:  # the negative control: resume without the strategy's state
        server._restore_strategy_state = lambda arrays, meta: {  # type: ignore[method-assign]
            k: v for k, v in arrays.items() if not k.startswith("strategy:")}
    if crash_at is not None:
        original = server.on_round_end

        def crash(server_round, arrays, metrics):  # noqa: ANN001, ANN202
            if server_round == crash_at:
                raise KeyboardInterrupt("server killed")
            return original(server_round, arrays, metrics)

        server.on_round_end = crash  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            server.run(grid_for(template, out, tiny_mnist))
        return {}
    summary = server.run(grid_for(template, out, tiny_mnist))
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3
    return torch.load(out / "model.pt")


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_killed_server_resumes_with_the_strategy_state(tmp_path: Path, tiny_mnist: Path, name: str) -> None:
    template = PickledTemplate(load_object(str(write_fedavg(tmp_path, args="max_rounds=3")), FedAvgScheduler).obj)
    straight = run(template, tmp_path / "straight", tiny_mnist, name)
    out = tmp_path / "killed"
    run(template, out, tiny_mnist, name, crash_at=2)
    saved = Checkpoint(out / "checkpoint").load()
    assert saved is not None and saved[1]["round"] == 1 and saved[1]["strategy"] == name
    for attribute in STRATEGIES[name][1]:
        assert any(k.startswith(f"strategy:{attribute}/") for k in saved[0]), attribute
    resumed = run(template, out, tiny_mnist, name)
    for key, value in straight.items():
        np.testing.assert_allclose(resumed[key].numpy(), value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    if name == "fedadam":
        lost = tmp_path / "lost"
        run(template, lost, tiny_mnist, name, crash_at=2)
        forgot = run(template, lost, tiny_mnist, name, forget_state=True)
        assert not all(np.allclose(forgot[k].numpy(), v.numpy(), rtol=1e-5, atol=1e-6) for k, v in straight.items())


def test_resuming_with_another_strategy_is_refused(tmp_path: Path, tiny_mnist: Path) -> None:
    template = PickledTemplate(load_object(str(write_fedavg(tmp_path, args="max_rounds=3")), FedAvgScheduler).obj)
    out = tmp_path / "run"
    run(template, out, tiny_mnist, "fedadam", crash_at=2)
    settings = ServerSettings(out_dir=out, task_id="tiny", data_dir=tiny_mnist, strategy="fedavgm")
    with pytest.raises(ConfigError, match="made with --strategy fedadam, this run uses fedavgm"):
        HorizontalServer(template.new_instance(), settings).run(grid_for(template, out, tiny_mnist))

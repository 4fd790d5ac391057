"""Task files written for AlphaFed 0.4.x (``simulations/sdk``) run unchanged, each copied
into a folder that holds only it and its network module, as a user would keep them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from alphafed_flwr.api import FedAvgScheduler, RunEnvironment
from alphafed_flwr.api.env import set_environment
from alphafed_flwr.cli import run_cli
from alphafed_flwr.loader import load_object
from alphafed_flwr.simulation.__main__ import main

pytestmark = pytest.mark.timeout(600)

SDK_TASKS = Path(__file__).parents[1] / "simulations" / "sdk"


def copy_task(folder: Path, name: str, launch: str = "") -> Path:
    """Copy ``simulations/sdk/<name>`` and its network into ``folder``; append ``launch``."""
    shutil.copy(SDK_TASKS / "sdk_net.py", folder / "sdk_net.py")
    path = folder / name
    path.write_text((SDK_TASKS / name).read_text() + launch)
    return path


def accuracies(push_log: Path) -> dict[int, float]:
    """``{round: accuracy}`` from the ``push_log`` lines of the task's ``run_test``."""
    found = re.findall(r"round (\d+) test accuracy ([0-9.]+)", push_log.read_text())
    return {int(r): float(a) for r, a in found}


def test_an_sdk_fedavg_task_uses_the_sdk_members(tmp_path: Path, tiny_mnist: Path) -> None:
    path = copy_task(tmp_path, "mnist_fedavg.py")
    sched = load_object(f"{path}:MnistFedAvg", FedAvgScheduler).obj
    out = tmp_path / "out"
    env = RunEnvironment("server", "server", out, tiny_mnist, "sdk-task")
    set_environment(env)
    sched.bind(env)
    sched.validate_context()
    assert sched.device == torch.device("cpu") and sched.id == "server" and sched.is_aggregator
    assert sched.run_local_round() == 240
    sched.call_test()
    sched.close_outputs()
    party = out / "parties" / "server"
    assert (party / "result" / "model.pt").is_file()  # get_result_dir, as the aggregator
    assert "server has 240 training samples." in (party / "push_log.log").read_text()
    assert list(accuracies(party / "push_log.log")) == [1]
    assert list((out / "tensorboard" / "server").glob("events.out.tfevents.*"))


def test_an_sdk_fedprox_task_with_the_aggregator_training(tmp_path: Path, tiny_mnist: Path) -> None:
    task = copy_task(
        tmp_path,
        "mnist_fedprox.py",
        "\nscheduler = MnistFedProx(max_rounds=2, log_rounds=1, mu=0.1, involve_aggregator=True,"
        " batch_size=16)\nscheduler.submit(task_id='sdk-fedprox')\n",
    )
    out = tmp_path / "run"
    code = run_cli(main, [str(task), "--num-clients", "2", "--seed", "1",
                          "--data-dir", str(tiny_mnist), "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["rounds"][-1]["train"]["num-results"] == 3  # 2 clients + the aggregator
    tested = accuracies(out / "parties" / "server" / "push_log.log")
    assert sorted(tested) == [1, 2] and tested[2] > 0.2
    for client in ("client-0", "client-1"):
        lines = (out / "parties" / client / "push_log.log").read_text()
        assert re.findall(r"round (\d) mu 0.1 train loss", lines) == ["1", "2"]

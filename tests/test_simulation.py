"""End to end on Flower's Ray simulation engine (tiny generated data, a few rounds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tasks import write_fedavg

from alphafed_flwr.cli import run_cli
from alphafed_flwr.simulation.__main__ import main

pytestmark = pytest.mark.timeout(600)


def test_fedavg_with_three_virtual_clients(tmp_path: Path, tiny_mnist: Path) -> None:
    task = write_fedavg(tmp_path)
    out = tmp_path / "run"
    code = run_cli(main, [str(task), "--num-clients", "3", "--rounds", "2", "--seed", "1",
                          "--data-dir", str(tiny_mnist), "--out", str(out), "--partition", "dirichlet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["rounds"][-1]["train"]["num-results"] == 3
    assert summary["final_test"]["accuracy"] > 0.2
    assert sorted(p.name for p in (out / "metrics" / "clients").iterdir()) == [
        "client-0.csv", "client-1.csv", "client-2.csv"
    ]


def test_vertical_host_and_two_collaborators(tmp_path: Path) -> None:
    tests_dir = Path(__file__).parent
    (tmp_path / "host.py").write_text(
        # schedule_timeout: the collaborators' Ray actors may take over 30 s to start on a loaded machine
        "from vertical_tasks import Host\n"
        "scheduler = Host(max_rounds=2, log_rounds=1, collaborators=2, schedule_timeout=120)\n"
        "scheduler.launch_task(task_id='vertical-e2e')\n"
    )
    (tmp_path / "c1.py").write_text("from vertical_tasks import Collaborator\ns = Collaborator('c1', ids=range(0, 20))\n")
    (tmp_path / "c2.py").write_text("from vertical_tasks import Collaborator\ns = Collaborator('c2', ids=range(3, 24))\n")
    out = tmp_path / "run"
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{tests_dir}{os.pathsep}{env_path}"
    try:
        code = run_cli(main, ["--host", str(tmp_path / "host.py"), "--collaborator", str(tmp_path / "c1.py"),
                              "--collaborator", str(tmp_path / "c2.py"), "--out", str(out),
                              "--batches-per-exchange", "2"])
    finally:
        os.environ["PYTHONPATH"] = env_path
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    for path in ("host/feature_model.pt", "host/infer_model.pt",
                 "collaborators/c1/feature_model.pt", "collaborators/c2/feature_model.pt"):
        assert (out / path).exists(), path


def test_a_tutorial_script_run_directly_starts_a_local_simulation(tmp_path: Path, tiny_mnist: Path) -> None:
    task = write_fedavg(tmp_path, args="max_rounds=1")
    env = {**os.environ, "ALPHAFED_LOCAL_CLIENTS": "2", "ALPHAFED_DATA_DIR": str(tiny_mnist)}
    proc = subprocess.run([sys.executable, str(task)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "running a local simulation with 2 virtual clients" in proc.stderr
    summary = json.loads((tmp_path / "runs" / "tiny-task" / "summary.json").read_text())
    assert summary["status"] == "completed"

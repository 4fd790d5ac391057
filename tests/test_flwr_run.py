"""Flower's own launcher: ``python -m alphafed_flwr new`` writes a task folder, and
``flwr run FOLDER local --stream`` runs it on the local simulation SuperLink that ``flwr``
starts (detached) for an ``address = ":local:"`` connection.

``FLWR_HOME`` is a temporary folder and the local SuperLink's ports are free ones
(``FLWR_LOCAL_*_PORT``), so the test neither reads the user's Flower config nor collides
with a SuperLink already running on 39091/39093; it stops the SuperLink it started by PID.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from tasks import write_fedavg

from alphafed_flwr.app_folder import local_superlink_pid, stop_process_tree

pytestmark = pytest.mark.timeout(900)
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(args: list[str], env: dict[str, str], timeout: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def test_flwr_run_local_runs_a_task_folder(tmp_path: Path, tiny_mnist: Path) -> None:
    home, port = tmp_path / "flwr-home", free_port()
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\noptions.num-supernodes = 2\n'
    )
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "NO_COLOR": "1"}
    env.pop("RAY_ADDRESS", None)
    (tmp_path / "src").mkdir()
    task = write_fedavg(tmp_path / "src")
    app, out = tmp_path / "app", tmp_path / "out"
    made = run([sys.executable, "-m", "alphafed_flwr", "new", str(app), str(task), "--rounds", "3",
                "--data-dir", str(tiny_mnist), "--client-eval", "off", "--seed", "0", "--out", str(out)],
               env, 120, tmp_path)
    assert made.returncode == 0, made.stderr
    settings = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert settings["config"]["rounds"] == 3 and settings["config"]["data-dir"] == str(tiny_mnist)

    try:  # run from elsewhere: the task file must resolve against the installed app folder
        result = run([str(BIN / "flwr"), "run", str(app), "local", "--stream", "--run-config", "rounds=1"],
                     env, 600, tmp_path / "src")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        run_id = re.search(r"Successfully started run (\d+)", result.stdout)
        assert run_id, result.stdout[-3000:]
        listed = run([str(BIN / "flwr"), "ls", "local", "--run-id", run_id.group(1), "--format", "json"],
                     env, 60, tmp_path)
        status = json.loads(listed.stdout)["runs"][0]["status"]
        assert status == "finished:completed", listed.stdout
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["rounds_completed"] == 1  # the override won
    finally:
        pid = local_superlink_pid(port)  # flwr leaves it running: stop it by PID
        stopped = stop_process_tree(pid) if pid is not None else []
    assert stopped and stopped[0] == pid
    assert local_superlink_pid(port) is None


def test_new_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    task = write_fedavg(tmp_path)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "x.txt").write_text("keep me")
    from alphafed_flwr.__main__ import main  # pylint: disable=import-outside-toplevel
    from alphafed_flwr.cli import run_cli  # pylint: disable=import-outside-toplevel

    assert run_cli(main, ["new", str(tmp_path / "app"), str(task)]) == 2
    assert (tmp_path / "app" / "x.txt").read_text() == "keep me"

"""Flower's own launcher: ``python -m alphafed_flwr new`` writes a task folder, and
``flwr run FOLDER local --stream`` runs it on the local simulation SuperLink that ``flwr``
starts (detached) for an ``address = ":local:"`` connection; ``flwr run FOLDER plain``
runs it in deployment on Flower's plain ``flower-superlink``, with two nodes started by
``python -m alphafed_flwr.client``.

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
import time
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


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Wait until the SuperLink on ``port`` answers ``/health`` (as flwr itself checks)."""
    import httpx  # pylint: disable=import-outside-toplevel

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "flower-superlink exited while starting"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"flower-superlink did not answer within {timeout:g}s")


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


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    """Wait until ``path`` (a process's log) contains ``text``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"process exited early; see {path}"
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise AssertionError(f"'{text}' did not appear in {path} within {timeout:g}s")


def test_flwr_run_on_a_plain_flower_superlink(tmp_path: Path, tiny_mnist: Path) -> None:
    """Deployment: Flower's plain ``flower-superlink``, two nodes started with our client
    command (a SuperNode plus the warm executor), and ``flwr run`` submitting the task folder."""
    home, port = tmp_path / "flwr-home", free_port()
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink.plain]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "NO_COLOR": "1"}
    task = write_fedavg(tmp_path)
    app, out = tmp_path / "app", tmp_path / "out"
    made = run([sys.executable, "-m", "alphafed_flwr", "new", str(app), str(task), "--rounds", "1",
                "--data-dir", str(tiny_mnist), "--client-eval", "off", "--seed", "0", "--out", str(out)],
               env, 120, tmp_path)
    assert made.returncode == 0, made.stderr
    commands = [[str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                 "--database", str(tmp_path / "superlink.db")]]
    commands += [[sys.executable, "-m", "alphafed_flwr.client", "--server", f"127.0.0.1:{port}", "--insecure",
                  "--partition-id", str(i), "--num-partitions", "2", "--data-dir", str(tiny_mnist),
                  "--out", str(tmp_path / f"client-{i}")] for i in range(2)]
    procs, logs = [], [tmp_path / f"proc-{i}.log" for i in range(3)]
    try:
        for i, command in enumerate(commands):
            with logs[i].open("w") as log:
                procs.append(subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT))
            if i == 0:
                wait_healthy(port, procs[0])
        for i in (1, 2):
            wait_for_text(logs[i], "SuperNode ID:", procs[i])
        result = run([str(BIN / "flwr"), "run", str(app), "plain", "--stream"], env, 600, tmp_path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        run_id = re.search(r"Successfully started run (\d+)", result.stdout)
        assert run_id, result.stdout[-3000:]
        listed = run([str(BIN / "flwr"), "ls", "plain", "--run-id", run_id.group(1), "--format", "json"],
                     env, 60, tmp_path)
        assert json.loads(listed.stdout)["runs"][0]["status"] == "finished:completed", listed.stdout
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["rounds"][-1]["train"]["num-results"] == 2
    finally:
        for proc in procs:
            stop_process_tree(proc.pid)
    assert all(proc.poll() is not None for proc in procs)


def test_new_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    task = write_fedavg(tmp_path)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "x.txt").write_text("keep me")
    from alphafed_flwr.__main__ import main  # pylint: disable=import-outside-toplevel
    from alphafed_flwr.cli import run_cli  # pylint: disable=import-outside-toplevel

    assert run_cli(main, ["new", str(tmp_path / "app"), str(task)]) == 2
    assert (tmp_path / "app" / "x.txt").read_text() == "keep me"

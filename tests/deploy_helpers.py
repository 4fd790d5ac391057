"""Processes for the deployment tests: loopback only, bounded waits, everything stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from alphafed_flwr.deploy.processes import free_port


def path_without_env() -> str:
    """``PATH`` without this environment's ``bin/``: commands must not depend on activation."""
    env_bins = {Path(sysconfig.get_path("scripts")).resolve(), Path(sys.executable).parent.resolve()}
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() not in env_bins]
    return os.pathsep.join(keep or ["/usr/bin", "/bin"])


class Proc:
    """A command of ours, its output in a log file."""

    def __init__(self, name: str, args: list[str], log: Path, cwd: Path) -> None:
        self.name, self.log = name, log
        self.handle = log.open("wb")
        self.process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", *args], stdout=self.handle, stderr=subprocess.STDOUT, cwd=cwd,
            env={**os.environ, "NO_COLOR": "1", "PATH": path_without_env()}, start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{self.name} did not finish within {timeout}s:\n{self.text()[-4000:]}") from exc

    def kill(self) -> None:
        """SIGKILL the command and everything it started."""
        try:
            tree = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        for proc in [psutil.Process(self.process.pid)] + tree if self.process.poll() is None else tree:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait(10)


class Cluster:
    """Servers and clients started by one test; ``stop()`` kills whatever is left."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.procs: list[Proc] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, name: str, *args: str) -> Proc:
        proc = Proc(name, list(args), self.root / f"{name}.log", self.root)
        self.procs.append(proc)
        return proc

    def server(self, name: str, *args: str) -> Proc:
        return self.start(name, "alphafed_flwr.server", "--address", self.address, *args)

    def client(self, name: str, *args: str) -> Proc:
        return self.start(name, "alphafed_flwr.client", "--server", self.address,
                          "--out", str(self.root / name), *args)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.handle.close()


def wait_for(check: Callable[[], Any], timeout: float, what: str, procs: list[Proc] = ()) -> Any:
    """Poll ``check`` until it returns something truthy (AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.name}\n{p.text()[-3000:]}" for p in procs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def summary(out: Path) -> dict[str, Any]:
    """summary.json of a run (empty while it does not exist)."""
    path = out / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def checkpoint_round(out: Path) -> int:
    """The round of the server's checkpoint (0 while there is none)."""
    from alphafed_flwr.adapters.outputs import Checkpoint  # pylint: disable=import-outside-toplevel

    try:
        loaded = Checkpoint(out / "checkpoint").load()
    except (OSError, ValueError, KeyError):
        return 0
    return int(loaded[1].get("round", 0)) if loaded else 0


def rounds_done(out: Path) -> int:
    return len(summary(out).get("rounds", []))

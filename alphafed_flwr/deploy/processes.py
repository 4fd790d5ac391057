"""Starting, watching and stopping the Flower processes we launch.

Every process comes from the running interpreter's environment, whatever ``PATH`` holds:
our own modules run as ``sys.executable -m ...``, Flower's commands through their entry
points with ``sys.executable`` (:func:`flower_command`), and the commands Flower itself
starts by name (``flwr-serverapp``, ``flwr-clientapp``, ``flower-superexec``) are found
first in this environment's scripts folder, which :func:`flower_env` puts at the front of
``PATH``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from importlib.metadata import entry_points
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

PARENT_PID_ENV = "ALPHAFED_PARENT_PID"
#: Commands Flower starts by name: they must exist in this environment's scripts folder.
FLOWER_SCRIPTS = ("flower-superexec", "flwr-serverapp", "flwr-clientapp")


def scripts_dir() -> Path:
    """The scripts (``bin/``) folder of the running interpreter's environment.

    The environment's own folder, else the user scheme's (``pip install --user``), else the
    interpreter's folder: the first that holds Flower's commands.
    """
    candidates = [Path(sysconfig.get_path("scripts"))]
    if sysconfig.get_preferred_scheme("user") in sysconfig.get_scheme_names():
        candidates.append(Path(sysconfig.get_path("scripts", sysconfig.get_preferred_scheme("user"))))
    candidates.append(Path(sys.executable).parent)
    return next((c for c in candidates if (c / FLOWER_SCRIPTS[0]).is_file()), candidates[0])


def require_flower_scripts() -> None:
    """Fail clearly if the commands Flower starts by name are missing from this environment."""
    from alphafed_flwr.api.errors import ConfigError  # pylint: disable=import-outside-toplevel

    missing = [name for name in FLOWER_SCRIPTS if not (scripts_dir() / name).is_file()]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} not found in {scripts_dir()} (the environment of {sys.executable}); "
            "reinstall Flower there: python -m pip install --force-reinstall 'flwr[simulation]>=1.41,<1.43'"
        )


def flower_command(script: str, *args: str) -> list[str]:
    """A Flower console command (e.g. ``flower-superexec``) run by this interpreter."""
    (entry,) = entry_points(group="console_scripts", name=script)
    launcher = (
        f"import sys; from {entry.module} import {entry.attr}; "
        f"sys.argv[0] = {script!r}; sys.exit({entry.attr}())"
    )
    return [sys.executable, "-c", launcher, *args]


def flower_env(flwr_home: Path, poll_interval: float | None = None) -> dict[str, str]:
    """Environment for Flower processes: this environment's commands first on ``PATH``, no
    network calls, a private ``FLWR_HOME``."""
    env = dict(os.environ)
    env.update(
        {
            "PATH": os.pathsep.join([str(scripts_dir()), env.get("PATH", os.defpath)]),
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            PARENT_PID_ENV: str(os.getpid()),
        }
    )
    if poll_interval is not None:
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(max(poll_interval, 0.01))
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Managed:
    """A child process in its own process group (stopping it stops its children too).

    Parameters
    ----------
    name : str
        Name used in messages.
    command : Sequence[str]
        The command line.
    env : dict[str, str]
        Environment.
    cwd : Path
        Working directory.
    log : Path | None
        File that receives the process's output (``None``: pass it through).
    on_line : Callable[[str], None] | None
        Called with each output line (the output is then read through a pipe).
    stdin_data : bytes | None
        Written to the process's standard input, which is then closed (a secret that must
        not appear in its environment or command line).
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: dict[str, str],
        cwd: Path,
        log: Path | None = None,
        on_line: Callable[[str], None] | None = None,
        stdin_data: bytes | None = None,
    ) -> None:
        self.name, self.log = name, log
        self._log: IO[bytes] | None = None
        stdout: int | IO[bytes] | None = None
        if on_line is not None:
            stdout = subprocess.PIPE
        elif log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            self._log = log.open("ab")
            stdout = self._log
        self.process = subprocess.Popen(  # noqa: S603 - our own command lines
            list(command),
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,
        )
        if stdin_data is not None:
            assert self.process.stdin is not None
            with self.process.stdin:
                self.process.stdin.write(stdin_data)
        self._reader: threading.Thread | None = None
        if on_line is not None:
            self._reader = threading.Thread(target=self._pump, args=(on_line,), daemon=True)
            self._reader.start()

    def _pump(self, on_line: Callable[[str], None]) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            on_line(raw.decode(errors="replace").rstrip("\n"))

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the process's log file ('' without one)."""
        try:
            text = self.log.read_text(errors="replace") if self.log is not None else ""
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the process to end (``None`` on timeout); its output is read fully."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def terminate(self) -> None:
        """Send SIGTERM to the process group and return at once (safe in signal handlers)."""
        _signal_group(self.process.pid, signal.SIGTERM)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds."""
        if self.alive():
            _signal_group(self.process.pid, signal.SIGTERM)
            if self.wait(grace) is None:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.wait(5)
        _signal_group(self.process.pid, signal.SIGKILL)  # leftover children of the group
        if self._log is not None:
            self._log.close()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def claim_folder(folder: Path, what: str) -> IO[str]:
    """Lock ``folder`` for this process (while the returned file stays open).

    Two nodes (or servers) must never share a folder's config, caches or checkpoints:
    a second process that claims the same folder gets a ``ConfigError`` naming the first.
    The lock goes with the process, however it ends.
    """
    from alphafed_flwr.api.errors import ConfigError  # pylint: disable=import-outside-toplevel

    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / ".alphafed.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise ConfigError(
            f"{folder} is in use by another {what} (pid {owner}); two {what}s must not share a "
            "folder: give each its own --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def exit_with_parent() -> None:
    """In a launched process: end our process group when the launching process is gone."""
    parent = int(os.environ.get(PARENT_PID_ENV, "0") or 0)
    if not parent:
        return

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                _signal_group(os.getpgid(0), signal.SIGTERM)
                time.sleep(5)
                _signal_group(os.getpgid(0), signal.SIGKILL)
                return

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def python_module(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]

"""Task folders for Flower's own launcher, ``flwr run``, and stopping ``flwr``'s local SuperLink.

``python -m alphafed_flwr new DIR task.py[:name] [run flags]`` writes DIR as a Flower app:
exactly the files of the app bundle that ``python -m alphafed_flwr.server`` submits (see
``deploy.bundle``), unpacked. Its ``pyproject.toml`` names the ServerApp and ClientApp of
``alphafed_flwr.deploy.apps`` (through the thin ``alphafed_app`` modules), so ``flwr run``
and our commands run the same app objects, and declares every run setting in
``[tool.flwr.app.config]`` (``RunSettings.to_run_config``: the defaults are the flags given
here), so ``flwr run DIR local --run-config "rounds=5"`` can override any of them. A setting
without a value (``--seed``, ``--rounds``, ``--target-epsilon`` and ``--data-dir`` when not
given) is not declared, since Flower's run config holds no ``None``; Flower refuses an
override of an undeclared key, so give such a setting here (or add its key to the folder's
``pyproject.toml``) to vary it per run. The task
file travels inside the bundle and is found relative to the installed app folder.

The folder declares no dependencies: a SuperLink (``flwr``'s local one included) installs an
app's dependencies with ``uv sync`` into a fresh environment for every run, which would
fetch torch again; alphafed-flwr and torch come from the environment ``flwr`` runs in.

``python -m alphafed_flwr stop-local`` stops the detached local SuperLink that ``flwr run``
starts for ``address = ":local:"`` connections (nothing in ``flwr`` stops it): the process
listening on ``$FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` (default 39091), and its children.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import tomllib
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomli_w

from alphafed_flwr.api.errors import ConfigError
from alphafed_flwr.api.log import logger
from alphafed_flwr.settings import RUN, RunSettings, add_flags

LOCAL_PORT_ENV = "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"
LOCAL_PORT_DEFAULT = 39091


def build_parser() -> argparse.ArgumentParser:
    """The ``new`` command's interface."""
    p = argparse.ArgumentParser(
        prog="python -m alphafed_flwr new",
        description="Write a Flower app folder for a FedAvg/FedSGD task, to run with `flwr run DIR`.",
    )
    p.add_argument("folder", help="the app folder to write (must not exist, or be empty)")
    p.add_argument("task", help="FedAvg/FedSGD task file: path/to/task.py[:name] (and the .py files beside it)")
    p.add_argument("--out", default=None,
                   help="default output folder of runs (run config out-dir; default: FOLDER/runs)")
    add_flags(p, (RUN,))
    return p


def write_task_folder(folder: Path, task: str, config: dict[str, Any]) -> Path:
    """Write the app bundle of ``task`` with run configuration ``config`` into ``folder``.

    Returns the folder's ``pyproject.toml``.
    """
    # pylint: disable=import-outside-toplevel
    from alphafed_flwr.deploy.bundle import build_fab
    from alphafed_flwr.loader import TaskRef

    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"'{folder}' exists and is not empty: give a new folder")
    fab, _ = build_fab(TaskRef.parse(task), config)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        for name in archive.namelist():
            if name.startswith(".info/"):
                continue  # the bundle's manifest of hashes; flwr writes its own
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    pyproject = folder / "pyproject.toml"
    document = tomllib.loads(pyproject.read_text())
    document["project"]["dependencies"] = []  # see the module docstring
    pyproject.write_text(tomli_w.dumps(document))
    return pyproject


def new(argv: Sequence[str] | None = None) -> int:
    """``new``: write a task folder; returns the exit code."""
    # pylint: disable=import-outside-toplevel
    from alphafed_flwr.api.fed_avg import FedAvgScheduler
    from alphafed_flwr.loader import load_object
    args = build_parser().parse_args(argv)
    loaded = load_object(args.task, FedAvgScheduler)  # fail fast on a wrong task
    task_id = args.task_id or loaded.task_id or loaded.obj.task_id
    folder = Path(args.folder).resolve()
    out = Path(args.out).resolve() if args.out else folder / "runs"
    settings = RunSettings.from_args(args, out=out, task_id=task_id).resolved()
    # `flwr run`'s virtual nodes have no node config: they read the data folder given here
    settings = dataclasses.replace(settings, clients_data_dir=settings.data_dir)
    pyproject = write_task_folder(folder, args.task, settings.to_run_config())
    logger.info("Wrote the Flower app %s (run settings in %s [tool.flwr.app.config])", folder, pyproject)
    logger.info('Run it with: flwr run %s local --stream [--run-config "rounds=3"]', folder)
    return 0


def local_superlink_pid(port: int | None = None) -> int | None:
    """PID of the process listening on the local SuperLink's port on loopback, if any."""
    import psutil  # pylint: disable=import-outside-toplevel

    port = port or int(os.environ.get(LOCAL_PORT_ENV, LOCAL_PORT_DEFAULT))
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    return None


def stop_process_tree(pid: int, timeout: float = 15.0) -> list[int]:
    """Terminate ``pid`` and its descendants (SIGTERM, then SIGKILL after ``timeout``)."""
    import psutil  # pylint: disable=import-outside-toplevel

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=timeout)
    return [p.pid for p in procs]


def stop_local(argv: Sequence[str] | None = None) -> int:
    """``stop-local``: stop flwr's detached local SuperLink; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="python -m alphafed_flwr stop-local",
        description="Stop the local SuperLink that `flwr run` starts for ':local:' connections.",
    )
    p.add_argument("--port", type=int, default=None,
                   help=f"its port (default ${LOCAL_PORT_ENV}, else {LOCAL_PORT_DEFAULT})")
    args = p.parse_args(argv)
    pid = local_superlink_pid(args.port)
    if pid is None:
        logger.info("No local SuperLink is listening on port %s", args.port or os.environ.get(LOCAL_PORT_ENV, LOCAL_PORT_DEFAULT))
        return 0
    stopped = stop_process_tree(pid)
    logger.info("Stopped the local SuperLink (PID %d) and %d child processes", pid, len(stopped) - 1)
    return 0

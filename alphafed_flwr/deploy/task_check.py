"""Check a task file, or run a ``DataChecker``, in a short-lived child process.

The server and client commands supervise their Flower processes for the whole run. Loading
the user's task in their own process (to fail fast on a wrong file or class) would keep
torch and the task's imports there until the run ends: about 0.5 GB per command. Instead a
child loads it, answers one JSON line, and exits. Errors come back with the same message.

    python -m alphafed_flwr.deploy.task_check '{"check": "host", "ref": "host.py:host"}'
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from alphafed_flwr.api import errors
from alphafed_flwr.api.errors import AlphaFedError, ConfigError
from alphafed_flwr.deploy.processes import python_module

REBUILT = ("ConfigError", "TaskFailed")  # rebuilt as such; any other AlphaFedError (the user code's) as a ConfigError
CHECK_TIMEOUT = 600.0  # seconds a task file may take to import (torch, datasets...)
RESULT = "task-check-result: "


def _family(ref: str, kind: str) -> dict[str, Any]:
    # pylint: disable=import-outside-toplevel
    from alphafed_flwr.api.fed_avg import FedAvgScheduler
    from alphafed_flwr.api.hetero_nn import HeteroNNCollaboratorScheduler, HeteroNNHostScheduler
    from alphafed_flwr.families import family_of
    from alphafed_flwr.loader import load_object

    base = {"host": HeteroNNHostScheduler, "task": FedAvgScheduler, "collaborator": HeteroNNCollaboratorScheduler}
    loaded = load_object(ref, base[kind])
    result = {"task_id": loaded.task_id or getattr(loaded.obj, "task_id", None)}
    if kind != "collaborator":
        result["family"] = family_of(loaded.obj).kind
    return result


def _data_checker(ref: str, task_id: str, data_dir: str | None) -> dict[str, Any]:
    # pylint: disable=import-outside-toplevel
    from alphafed_flwr.api.env import RunEnvironment, set_environment
    from alphafed_flwr.api.scheduler import DataChecker
    from alphafed_flwr.loader import load_object

    set_environment(RunEnvironment("client", "check", None, Path(data_dir) if data_dir else None, task_id))
    loaded = load_object(ref, DataChecker, init_kwargs={"task_id": task_id})
    passed, message = loaded.obj.execute_verification()
    return {"passed": bool(passed), "message": str(message)}


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """The child's side: one check, its result or the ``AlphaFedError`` it raised."""
    try:
        if request["check"] == "data-checker":
            return _data_checker(request["ref"], request["task_id"], request.get("data_dir"))
        return _family(request["ref"], request["check"])
    except AlphaFedError as exc:
        return {"error": str(exc), "type": type(exc).__name__}


def check_task(request: dict[str, Any], timeout: float = CHECK_TIMEOUT) -> dict[str, Any]:
    """Run :func:`answer` in a child process (this interpreter) and return its result.

    Raises
    ------
    AlphaFedError
        What the child raised, with its message: a ``ConfigError`` or ``TaskFailed`` as
        such, any other (the user code's error) as a ``ConfigError``; a ``ConfigError``
        naming the child's last output lines if it crashed or took over ``timeout`` seconds.
    """
    try:
        done = subprocess.run(  # noqa: S603 - our module, this interpreter
            python_module(__name__, json.dumps(request)), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"checking {request['ref']} took over {timeout:g} s: does the file do heavy work at import?") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ConfigError(f"checking {request['ref']} failed (exit code {done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT):])
    if "error" in result:
        kind = getattr(errors, result["type"]) if result.get("type") in REBUILT else ConfigError
        raise kind(result["error"])
    return result


def main() -> None:
    """Entry point of the child: the request is the only argument."""
    print(RESULT + json.dumps(answer(json.loads(sys.argv[1]))), flush=True)


if __name__ == "__main__":
    main()

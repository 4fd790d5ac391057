"""AlphaFed's folder helpers (``alphafed.fs``), mapped to this party's folders in a run.

In a run with an output folder ``<out>`` (simulation ``--out``, the server's output), a
party's root is ``<out>/parties/<party>`` (``server``, ``client-0``, a feature key...).
Elsewhere (no run, or a client without an output folder) it is
``<cache>/tasks/<task id>/<party>``, with ``<cache>`` = ``$ALPHAFED_CACHE_DIR`` or
``~/.cache/alphafed_flwr``. ``runtime``, ``share``, ``result`` and ``model`` are folders
in the root, created on first use. ``get_dataset_dir`` is the party's data folder
(``--data-dir``), not a folder in the root: see ``alphafed_flwr.api.env.get_dataset_dir``.

``task_id`` is accepted as in AlphaFed; in a run each party serves one task, and its
folders are that task's whatever id is passed. Outside a run, it names the task folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from .env import RunEnvironment, current_environment, default_cache_dir, get_dataset_dir
from .errors import ConfigError

__all__ = [
    "get_dataset_dir",
    "get_model_dir",
    "get_result_dir",
    "get_root_dir",
    "get_runtime_dir",
    "get_share_dir",
]

LOCAL_PARTY = "local"


def safe_name(text: str) -> str:
    """``text`` as one folder name (anything but letters, digits, ``_.-`` becomes ``_``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip(".")
    return name or "_"


def get_root_dir(task_id: str | None = None) -> str:
    """This party's writable root folder for the task (created if missing).

    Parameters
    ----------
    task_id : str | None
        The task; in a run, the run's task is used whatever is passed.
    """
    if task_id is not None and not isinstance(task_id, str):
        raise ConfigError(f"task_id must be a string or None, got {task_id!r}")
    root = party_root(current_environment(), task_id)
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


def party_root(env: RunEnvironment | None, task_id: str | None = None) -> Path:
    """The root folder of the party that runs in ``env`` (see the module docstring)."""
    if env is not None and env.out_dir is not None:
        return Path(env.out_dir) / "parties" / safe_name(env.party)
    task = env.task_id if env is not None else (task_id or "local-task")
    party = env.party if env is not None else LOCAL_PARTY
    return default_cache_dir() / "tasks" / safe_name(task) / safe_name(party)


def _sub_dir(name: str, task_id: str | None) -> str:
    folder = Path(get_root_dir(task_id)) / name
    folder.mkdir(exist_ok=True)
    return str(folder)


def get_runtime_dir(task_id: str | None = None) -> str:
    """This party's folder for runtime files (``<root>/runtime``)."""
    return _sub_dir("runtime", task_id)


def get_share_dir(task_id: str | None = None) -> str:
    """This party's folder for files it shares (``<root>/share``)."""
    return _sub_dir("share", task_id)


def get_result_dir(task_id: str | None = None) -> str:
    """This party's folder for results (``<root>/result``)."""
    return _sub_dir("result", task_id)


def get_model_dir(task_id: str | None = None) -> str:
    """This party's folder for model files (``<root>/model``)."""
    return _sub_dir("model", task_id)

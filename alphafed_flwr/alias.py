"""What ``import alphafed`` provides when the alias is active (see ``_alias``).

As in alphamed-federated 0.4.9, the package re-exports ``alphafed.fs``, ``alphafed.loggers``
and ``alphafed.mock``; ``ConfigError`` and ``TaskFailed`` are kept from AlphaFed 0.1.x.
"""

import importlib
from types import ModuleType

from alphafed_flwr._alias import ALIASES, NOT_PROVIDED
from alphafed_flwr.api.errors import ConfigError, TaskFailed
from alphafed_flwr.api.fs import (
    get_dataset_dir,
    get_model_dir,
    get_result_dir,
    get_root_dir,
    get_runtime_dir,
    get_share_dir,
)
from alphafed_flwr.api.loggers import logger, task_logger
from alphafed_flwr.api.mock import is_mock_mode, mock_context, mock_node_id, mock_nodes

__all__ = [
    "ConfigError",
    "TaskFailed",
    "get_dataset_dir",
    "get_model_dir",
    "get_result_dir",
    "get_root_dir",
    "get_runtime_dir",
    "get_share_dir",
    "is_mock_mode",
    "logger",
    "mock_context",
    "mock_node_id",
    "mock_nodes",
    "task_logger",
]
__path__: list[str] = []  # a package, so that ``alphafed.fed_avg`` etc. resolve via the alias

_SUBMODULES = {name.split(".")[1] for name in (*ALIASES, *NOT_PROVIDED) if name.count(".") == 1}


def __getattr__(name: str) -> ModuleType:
    """``from alphafed import fed_avg`` (a submodule not imported yet) imports it."""
    if name in _SUBMODULES:
        return importlib.import_module(f"alphafed.{name}")
    raise AttributeError(f"module 'alphafed' has no attribute {name!r}")

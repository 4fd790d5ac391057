"""What ``import alphafed`` provides when the alias is active (see ``_alias``)."""

from alphafed_flwr.api.env import get_dataset_dir
from alphafed_flwr.api.errors import ConfigError, TaskFailed
from alphafed_flwr.api.log import logger

__all__ = ["ConfigError", "TaskFailed", "get_dataset_dir", "logger"]
__path__: list[str] = []  # a package, so that ``alphafed.fed_avg`` etc. resolve via the alias

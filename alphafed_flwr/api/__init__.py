"""The AlphaFed scheduler API (pure torch; Flower is never imported here)."""

from .env import RunEnvironment
from .errors import AlphaFedError, ConfigError, NotProvidedError, TaskFailed, UserCodeError
from .fed_avg import FedAvgScheduler, FedSGDScheduler
from .fed_prox import FedProxScheduler
from .fs import (
    get_dataset_dir,
    get_model_dir,
    get_result_dir,
    get_root_dir,
    get_runtime_dir,
    get_share_dir,
)
from .hetero_nn import HeteroNNCollaboratorScheduler, HeteroNNHostScheduler
from .loggers import logger, task_logger
from .metrics import register_metrics
from .mock import is_mock_mode, mock_context, mock_node_id, mock_nodes
from .scheduler import DataChecker, Scheduler, TaskComplete

__all__ = [
    "AlphaFedError",
    "ConfigError",
    "DataChecker",
    "FedAvgScheduler",
    "FedProxScheduler",
    "FedSGDScheduler",
    "HeteroNNCollaboratorScheduler",
    "HeteroNNHostScheduler",
    "NotProvidedError",
    "RunEnvironment",
    "Scheduler",
    "TaskComplete",
    "TaskFailed",
    "UserCodeError",
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
    "register_metrics",
    "task_logger",
]

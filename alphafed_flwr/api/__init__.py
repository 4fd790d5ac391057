"""The AlphaFed scheduler API (pure torch; Flower is never imported here)."""

from .env import RunEnvironment, get_dataset_dir
from .errors import AlphaFedError, ConfigError, TaskFailed, UserCodeError
from .fed_avg import FedAvgScheduler, FedSGDScheduler
from .hetero_nn import HeteroNNCollaboratorScheduler, HeteroNNHostScheduler
from .log import logger
from .metrics import register_metrics
from .scheduler import DataChecker, Scheduler, TaskComplete

__all__ = [
    "AlphaFedError",
    "ConfigError",
    "DataChecker",
    "FedAvgScheduler",
    "FedSGDScheduler",
    "HeteroNNCollaboratorScheduler",
    "HeteroNNHostScheduler",
    "RunEnvironment",
    "Scheduler",
    "TaskComplete",
    "TaskFailed",
    "UserCodeError",
    "get_dataset_dir",
    "logger",
    "register_metrics",
]

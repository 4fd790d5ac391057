"""The AlphaFed scheduler API (pure torch; Flower is never imported here).

Names load on first use (PEP 562), so that ``alphafed_flwr.api.errors`` and ``.log`` stay
free of torch: the deployment commands import them and keep torch out of their own process.
"""

import importlib
from typing import Any

_SOURCES = {
    "RunEnvironment": "env",
    "AlphaFedError": "errors", "ConfigError": "errors", "NotProvidedError": "errors",
    "TaskFailed": "errors", "UserCodeError": "errors",
    "FedAvgScheduler": "fed_avg", "FedSGDScheduler": "fed_avg",
    "FedProxScheduler": "fed_prox",
    "get_dataset_dir": "fs", "get_model_dir": "fs", "get_result_dir": "fs", "get_root_dir": "fs",
    "get_runtime_dir": "fs", "get_share_dir": "fs",
    "HeteroNNCollaboratorScheduler": "hetero_nn", "HeteroNNHostScheduler": "hetero_nn",
    "logger": "loggers", "task_logger": "loggers",
    "register_metrics": "metrics",
    "is_mock_mode": "mock", "mock_context": "mock", "mock_node_id": "mock", "mock_nodes": "mock",
    "DataChecker": "scheduler", "Scheduler": "scheduler", "TaskComplete": "scheduler",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{source}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))

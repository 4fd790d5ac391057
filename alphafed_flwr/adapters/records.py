"""Tensors to and from Flower records (``ArrayRecord``/``ConfigRecord``, never pickles)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from torch.optim import Optimizer

from alphafed_flwr.api.errors import ConfigError

OPT_ARRAYS = "optimizer.arrays"
OPT_CONFIG = "optimizer.config"


def state_to_arrays(state: Mapping[str, Any], what: str = "state_dict()") -> ArrayRecord:
    """A ``state_dict`` of tensors as an ArrayRecord (order kept)."""
    record = ArrayRecord()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"{what} must map names to tensors, but '{key}' is a {type(value).__name__}; "
                "only tensors can be averaged and sent"
            )
        record[str(key)] = Array(value.detach().cpu().contiguous().numpy())
    return record


def arrays_to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """An ArrayRecord as a ``state_dict`` of CPU tensors."""
    return {key: torch.from_numpy(np.array(arr.numpy(), copy=True)) for key, arr in record.items()}


def arrays_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord as numpy arrays."""
    return {key: arr.numpy() for key, arr in record.items()}


def numpy_to_arrays(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Numpy arrays as an ArrayRecord."""
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


def optimizer_to_records(optimizer: Optimizer) -> tuple[ArrayRecord, ConfigRecord]:
    """Flatten ``optimizer.state_dict()``: tensors to arrays, the rest to JSON.

    ``ArrayRecord(optimizer.state_dict())`` does not work as is: the state is nested by
    parameter index and mixes tensors (momentum buffers) with numbers and hyperparameters.
    """
    state = optimizer.state_dict()
    arrays = ArrayRecord()
    scalars: dict[str, Any] = {}
    for index, param_state in state["state"].items():
        for name, value in param_state.items():
            key = f"{index}/{name}"
            if isinstance(value, torch.Tensor):
                arrays[key] = Array(value.detach().cpu().contiguous().numpy())
            else:
                scalars[key] = value
    config = ConfigRecord(
        {
            "param_groups": json.dumps(_encode(state["param_groups"])),
            "scalars": json.dumps(_encode(scalars)),
        }
    )
    return arrays, config


def records_to_optimizer(optimizer: Optimizer, arrays: ArrayRecord, config: ConfigRecord) -> None:
    """Load what ``optimizer_to_records`` produced into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for key, arr in arrays.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = torch.from_numpy(np.array(arr.numpy(), copy=True))
    for key, value in _decode(json.loads(str(config["scalars"]))).items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    groups = _decode(json.loads(str(config["param_groups"])))
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_optimizer(state: RecordDict, optimizer: Optimizer, prefix: str = "") -> None:
    """Keep the optimizer's state in a node's ``context.state``."""
    arrays, config = optimizer_to_records(optimizer)
    state[prefix + OPT_ARRAYS] = arrays
    state[prefix + OPT_CONFIG] = config


def restore_optimizer(state: RecordDict, optimizer: Optimizer, prefix: str = "") -> bool:
    """Load the optimizer state kept by ``save_optimizer``; ``False`` if there is none."""
    if prefix + OPT_CONFIG not in state.config_records:
        return False
    records_to_optimizer(
        optimizer, state.array_records[prefix + OPT_ARRAYS], state.config_records[prefix + OPT_CONFIG]
    )
    return True


def _encode(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_decode(v) for v in value["__tuple__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value

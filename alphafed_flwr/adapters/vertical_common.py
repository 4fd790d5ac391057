"""Pieces shared by the vertical host and collaborator adapters."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord
from torch import nn
from torch.optim import Optimizer

from alphafed_flwr.api.errors import ConfigError

from .outputs import Checkpoint
from .records import (
    arrays_to_numpy,
    arrays_to_state,
    numpy_to_arrays,
    optimizer_to_records,
    records_to_optimizer,
    state_to_arrays,
)

KEEP_CHECKPOINTS = 2


def length_prefixed(ids: Iterable[Any]) -> bytes:
    """IDs as text, each prefixed by its length in bytes: no two ID lists encode alike."""
    parts = []
    for i in ids:
        data = str(i).encode("utf-8", "surrogatepass")
        parts.append(len(data).to_bytes(8, "big") + data)
    return b"".join(parts)


def _keyed(salt: bytes, *parts: bytes) -> str:
    mac = hmac.new(salt, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(8, "big") + part)
    return mac.hexdigest()[:32]


def ids_set_digest(salt: bytes, ids: Iterable[Any]) -> str:
    """Keyed digest of a set of IDs (compared as strings, order-free)."""
    return _keyed(salt, b"set", length_prefixed(sorted(str(i) for i in ids)))


def split_digest(salt: bytes, train_ids: Iterable[Any], test_ids: Iterable[Any]) -> str:
    """Keyed digest of a ``split_dataset`` result, to check that parties agree.

    Train, then test, each as its sorted, length-prefixed IDs: swapping the two parts, or
    IDs whose concatenations collide, give other digests.
    """
    train = length_prefixed(sorted(str(i) for i in train_ids))
    test = length_prefixed(sorted(str(i) for i in test_ids))
    return _keyed(salt, b"split", b"train", train, b"test", test)


def check_split(party: str, train_ids: Any, test_ids: Any) -> tuple[list[Any], list[Any]]:
    """The split as lists, or a clear error if ``split_dataset`` returned something else."""
    try:
        return list(train_ids), list(test_ids)
    except TypeError as exc:
        raise ConfigError(f"{party}: split_dataset must return two collections of IDs ({exc})") from exc


def module_arrays(prefix: str, model: nn.Module) -> dict[str, np.ndarray]:
    """A model's state as ``{prefix/name: array}``."""
    return {f"{prefix}/{k}": v for k, v in arrays_to_numpy(state_to_arrays(model.state_dict())).items()}


def load_module_arrays(prefix: str, model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load what ``module_arrays`` produced."""
    part = {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
    model.load_state_dict(arrays_to_state(numpy_to_arrays(part)))


def optimizer_arrays(prefix: str, optimizer: Optimizer) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """An optimizer's state as arrays plus JSON-able config."""
    arrays, config = optimizer_to_records(optimizer)
    return {f"{prefix}/{k}": v for k, v in arrays_to_numpy(arrays).items()}, {prefix: dict(config)}


def load_optimizer_arrays(
    prefix: str, optimizer: Optimizer, arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> None:
    """Load what ``optimizer_arrays`` produced."""
    part = {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
    records_to_optimizer(optimizer, numpy_to_arrays(part), ConfigRecord(meta[prefix]))


class RoundCheckpoints:
    """A party's checkpoints after each completed round (the last ``KEEP_CHECKPOINTS``).

    Parameters
    ----------
    folder : Path
        Where ``round-<r>/checkpoint.npz`` files live.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def rounds(self) -> list[int]:
        """Rounds with a checkpoint, ascending."""
        if not self.folder.exists():
            return []
        found = []
        for path in self.folder.glob("round-*/checkpoint.npz"):
            try:
                found.append(int(path.parent.name.split("-", 1)[1]))
            except ValueError:
                continue
        return sorted(found)

    def save(self, server_round: int, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Write round ``server_round`` and drop older ones beyond the kept number."""
        Checkpoint(self.folder / f"round-{server_round}").save(arrays, meta)
        for old in self.rounds()[:-KEEP_CHECKPOINTS]:
            path = self.folder / f"round-{old}"
            for child in path.iterdir():
                child.unlink()
            path.rmdir()

    def load(self, server_round: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The checkpoint of ``server_round``."""
        loaded = Checkpoint(self.folder / f"round-{server_round}").load()
        if loaded is None:
            raise ConfigError(f"no checkpoint of round {server_round} in {self.folder}")
        return loaded


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or ``None`` if it does not exist."""
    return json.loads(path.read_text()) if path.exists() else None

"""Run outputs: checkpoints (resume), the run summary, final weights."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.npz"
META_KEY = "__meta__"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Atomically write JSON."""
    atomic_write_bytes(path, json.dumps(payload, indent=2, default=str).encode())


class Checkpoint:
    """One party's checkpoint: arrays plus JSON metadata, written atomically in one file.

    Parameters
    ----------
    folder : Path
        Where ``checkpoint.npz`` lives.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / CHECKPOINT_FILE

    def save(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Replace the checkpoint with ``arrays`` and ``meta``."""
        import io  # pylint: disable=import-outside-toplevel

        if META_KEY in arrays:
            raise ValueError(f"'{META_KEY}' is reserved")
        buffer = io.BytesIO()
        payload = {f"a:{k}": np.asarray(v, order="C") for k, v in arrays.items()}
        payload[META_KEY] = np.array(json.dumps(dict(meta), default=str))
        np.savez(buffer, **payload)
        atomic_write_bytes(self.path, buffer.getvalue())

    def load(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """``(arrays, meta)`` or ``None`` when there is no checkpoint."""
        if not self.path.exists():
            return None
        with np.load(self.path, allow_pickle=False) as data:
            meta = json.loads(str(data[META_KEY]))
            arrays = {k[2:]: data[k] for k in data.files if k.startswith("a:")}
        return arrays, meta


def save_state_dict(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Save a model's weights with ``torch.save`` (a local output file, not network data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
    os.replace(tmp, path)


class RunSummary:
    """``summary.json``: rounds, test metrics, timings and configuration; rewritten each round.

    Parameters
    ----------
    out_dir : Path
        The run's output folder.
    config : Mapping[str, Any]
        The run configuration recorded in the summary.
    previous : Mapping[str, Any] | None
        The summary of an interrupted run that this one resumes.
    """

    def __init__(
        self, out_dir: Path, config: Mapping[str, Any], previous: Mapping[str, Any] | None = None
    ) -> None:
        self.path = Path(out_dir) / "summary.json"
        self.data: dict[str, Any] = {
            "status": "running",
            "config": dict(config),
            "rounds": [],
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "resumed_from_round": None,
        }
        if previous:
            self.data["rounds"] = list(previous.get("rounds", []))
            self.data["started_at"] = previous.get("started_at", self.data["started_at"])

    def add_round(self, entry: Mapping[str, Any], write: bool = True) -> None:
        """Record one completed round (``write=False``: the caller writes after its checkpoint)."""
        self.data["rounds"].append(dict(entry))
        if write:
            self.write()

    def finish(self, status: str, **extra: Any) -> None:
        """Record the final status (``completed`` or ``failed``) and anything else."""
        self.data["status"] = status
        self.data["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.data.update(extra)
        self.write()

    def write(self) -> None:
        """Write the file atomically."""
        write_json(self.path, self.data)

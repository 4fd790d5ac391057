"""A collaborator's training state kept alive in its process between messages (simulation).

Without it, every ``train.exchange`` message carries the feature model and its optimizer
state in ``context.state`` both ways (about 0.6 MB for a small CNN with Adam: pickled and
copied through Ray's object store twice per exchange), and the collaborator recomputes each
batch's forward pass when its gradient arrives (``feature_replay``). With it:

- the model and optimizer stay in the process's cached scheduler; ``context.state`` carries
  only a token naming their version (``LIVE_TOKEN``), and a snapshot file in the node's
  folder (``<folder>/live/state.bin``, same token) serves any other process that gets the
  node's next message (another Ray actor, a restarted one);
- at one batch per exchange, the features sent for a batch keep their autograd graph
  (``KeptGraph``) until the batch's gradient arrives, so the forward pass runs once.

A process whose cache does not hold the token's version loads the snapshot and replays
the batch's forward pass as before: both paths give the same weights (the kept pass and
the replayed one run with the same seed on the same parameters, and the buffers the kept
pass updated are applied only when its gradient is).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from alphafed_flwr.api.errors import ConfigError

from .records import _decode, _encode  # pylint: disable=protected-access

LIVE_TOKEN = "live-token"
SNAPSHOT = "state.bin"


@dataclass
class KeptGraph:
    """The features sent for one batch, with their autograd graph, until the gradient comes.

    Parameters
    ----------
    server_round, index : int
        The batch (round, zero-based index in the round).
    output : torch.Tensor
        The feature model's output (requires grad).
    buffers : list[torch.Tensor]
        The model's buffers as this pass left them; the model keeps its older buffers until
        the gradient is applied (as the replayed pass would update them then).
    """

    server_round: int
    index: int
    output: torch.Tensor
    buffers: list[torch.Tensor]


@dataclass
class LiveEntry:
    """What a process holds for one node: the version token, the scheduler that holds that
    version of the model and optimizer, and the kept graph (if any)."""

    token: str
    scheduler: Any
    graph: KeptGraph | None = None


_live: dict[str, LiveEntry] = {}


def forward_kept(
    model: nn.Module, x: torch.Tensor, seed: int, server_round: int, index: int
) -> tuple[np.ndarray, KeptGraph]:
    """One batch's features (as sent) and their kept graph; the model's buffers are unchanged.

    The buffers this pass updated (BatchNorm statistics, which its graph references) are
    swapped out for copies of the old ones, not overwritten in place.
    """
    slots = _buffer_slots(model)
    before = [getattr(module, name).detach().clone() for module, name in slots]
    torch.manual_seed(seed)
    out = model(x)
    after = [getattr(module, name) for module, name in slots]
    for (module, name), old in zip(slots, before, strict=True):
        setattr(module, name, old)
    return out.detach().cpu().numpy(), KeptGraph(server_round, index, out, after)


def backward_kept(model: nn.Module, graph: KeptGraph, grad: np.ndarray) -> None:
    """Back-propagate ``grad`` through a kept graph and apply the buffers its pass left."""
    grad_tensor = torch.from_numpy(np.asarray(grad, dtype=np.float32)).to(graph.output.dtype)
    if tuple(grad_tensor.shape) != tuple(graph.output.shape):
        raise ConfigError(
            f"gradient of shape {tuple(grad_tensor.shape)} for features of shape {tuple(graph.output.shape)}"
        )
    for (module, name), new in zip(_buffer_slots(model), graph.buffers, strict=True):
        setattr(module, name, new)
    graph.output.backward(grad_tensor)


def _buffer_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every buffer of ``model`` as (its module, its name there), in ``buffers()`` order."""
    return [
        (module, name)
        for module in model.modules()
        for name, buf in module.named_buffers(recurse=False)
        if buf is not None
    ]


class LiveState:
    """One node's live state in this process, and its snapshot file.

    Parameters
    ----------
    scope : str
        The node (``run_id:node_id``).
    folder : Path
        Where the snapshot lives (``<folder>/state.bin``).
    """

    def __init__(self, scope: str, folder: Path) -> None:
        self.scope = scope
        self.path = Path(folder) / SNAPSHOT

    def current(self, token: str | None, scheduler: Any) -> LiveEntry | None:
        """This process's entry if it holds version ``token`` in ``scheduler``, else ``None``."""
        entry = _live.get(self.scope)
        if token and entry is not None and entry.token == token and entry.scheduler is scheduler:
            return entry
        return None

    def load(self, token: str, model: nn.Module, optimizer: Optimizer) -> None:
        """Load version ``token`` from the snapshot into ``model`` and ``optimizer``."""
        if not self.path.exists():
            raise ConfigError(f"the feature model's state {token} is neither in this process nor in {self.path}")
        found, meta, arrays = _read(self.path)
        if found != token:
            raise ConfigError(f"{self.path} holds the feature model's state {found}, not {token}")
        model.load_state_dict({k[2:]: v for k, v in arrays.items() if k.startswith("m/")})
        tensors = {k[2:]: v for k, v in arrays.items() if k.startswith("o/")}
        state: dict[int, dict[str, Any]] = {}
        for key, value in {**tensors, **_decode(meta["scalars"])}.items():
            index, name = key.split("/", 1)
            state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": _decode(meta["param_groups"])})
        _live.pop(self.scope, None)

    def save(self, scheduler: Any, graph: KeptGraph | None) -> str:
        """Snapshot the scheduler's model and optimizer under a new token; keep them live."""
        token = secrets.token_hex(8)
        arrays = {f"m/{k}": v.detach().cpu().numpy() for k, v in scheduler.feature_model.state_dict().items()}
        opt = scheduler.feature_optimizer.state_dict()
        scalars = {}
        for index, param_state in opt["state"].items():
            for name, value in param_state.items():
                if isinstance(value, torch.Tensor):
                    arrays[f"o/{index}/{name}"] = value.detach().cpu().numpy()
                else:
                    scalars[f"{index}/{name}"] = value
        meta = {"param_groups": _encode(opt["param_groups"]), "scalars": _encode(scalars)}
        _write(self.path, token, meta, arrays)
        _live[self.scope] = LiveEntry(token, scheduler, graph)
        return token


def forget_all() -> None:
    """Drop every live entry of this process (what a new process starts with)."""
    _live.clear()


def _write(path: Path, token: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write a snapshot atomically (no fsync: it only serves this run's processes): the
    header's length (8 bytes), the JSON header (token, meta, each array's key, dtype, shape
    and offset), then the arrays' bytes."""
    index, offset = [], 0
    for key, array in arrays.items():
        index.append([key, array.dtype.str, list(array.shape), offset])
        offset += array.nbytes
    header = json.dumps({"token": token, "meta": meta, "arrays": index}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(len(header).to_bytes(8, "little") + header)
            for array in arrays.values():
                handle.write(np.ascontiguousarray(array).tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """A snapshot's token, meta and arrays (as tensors)."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    arrays = {}
    for key, dtype, shape, offset in header["arrays"]:
        kind = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        flat = np.frombuffer(raw, dtype=kind, count=count, offset=8 + size + offset)
        arrays[key] = torch.from_numpy(flat.reshape(shape).copy())
    return str(header["token"]), header["meta"], arrays

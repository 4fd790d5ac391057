"""Collaborator features without a live generator: record a round's inputs, replay them.

A collaborator's ``iterate_train_feature(feature_model, ids)`` is user code that loads data
and yields ``feature_model(x)`` per batch. No process lives long enough to keep that
generator open across a round's messages (nor, in deployment, an autograd graph: see
``live_state`` for the simulation's kept graphs), so:

1. at the start of a round the generator runs once with ``RecordingModel`` in place of the
   feature model; it records each batch's input ``x`` and returns the real model's output
   (computed without gradient, running statistics untouched);
2. the inputs are kept for the round (``InputStore``: memory plus one ``.npy`` file that
   later messages memory-map);
3. each later message recomputes ``feature_model(x_i)`` with the real model: once without
   gradient to send features, once with gradient to back-propagate the host's gradient.
   The random state is reseeded per (round, batch) before each pass, so dropout masks of
   the two passes are identical, and buffers (BatchNorm statistics) are updated only by
   the pass that is back-propagated.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alphafed_flwr.api.errors import ConfigError

from .templates import stable_seed
from .vertical_common import length_prefixed


class RecordingModel(nn.Module):
    """Stands in for the feature model while the user's generator runs once per round."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self._tail: tuple[int, ...] | None = None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:  # noqa: D102
        if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
            raise ConfigError(
                "iterate_*_feature must call feature_model(x) with exactly one tensor "
                f"(got {len(args)} positional and {len(kwargs)} keyword arguments)"
            )
        x = args[0].detach()
        if self._tail is None:  # one real pass for the output shape; placeholders after it
            with torch.no_grad(), frozen_buffers(self.model):
                out = self.model(x)
            self._tail = tuple(out.shape[1:])
        else:
            out = torch.zeros((x.shape[0], *self._tail))
        self.inputs.append(x.cpu().contiguous())
        self.outputs.append(out)
        return out


def record_batches(generator: Iterator[Any], recorder: RecordingModel, party: str) -> list[str | None]:
    """Drain a collaborator's generator; return each batch's ID digest key (or ``None``).

    Each yielded item must be the tensor the recorder returned for that batch, or a tuple
    ``(that tensor, ids)``.
    """
    ids_per_batch: list[Any] = []
    for index, item in enumerate(generator):
        features, ids = (item[0], item[1]) if isinstance(item, tuple) else (item, None)
        if len(recorder.outputs) != index + 1 or features is not recorder.outputs[index]:
            raise ConfigError(
                f"{party}: iterate_train_feature must call feature_model(x) once per batch and "
                f"yield its result unchanged (batch {index} broke this: "
                f"{len(recorder.outputs)} calls so far)"
            )
        ids_per_batch.append(None if ids is None else [str(i) for i in ids])
    return ids_per_batch


@contextmanager
def frozen_buffers(model: nn.Module) -> Iterator[None]:
    """Run a forward pass without changing the model's buffers (BatchNorm statistics)."""
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, old in zip(model.buffers(), saved, strict=True):
                buf.copy_(old)


def batch_seed(task: str, party: str, server_round: int, batch: int) -> int:
    """The random seed of one batch's forward passes (same in every process)."""
    return stable_seed("batch", task, party, server_round, batch)


def ids_digest(salt: bytes, ids: list[str]) -> str:
    """Keyed digest of a batch's ordered, length-prefixed sample IDs."""
    return hmac.new(salt, b"batch" + length_prefixed(ids), hashlib.sha256).hexdigest()[:32]


@dataclass
class RecordedRound:
    """A round's recorded inputs: one array (all batches stacked) and the batch offsets."""

    inputs: np.ndarray
    offsets: np.ndarray
    digests: list[str]

    @property
    def num_batches(self) -> int:
        """Batches in the round."""
        return len(self.offsets) - 1

    def batch(self, index: int) -> torch.Tensor:
        """Input of batch ``index``."""
        if not 0 <= index < self.num_batches:
            raise IndexError(index)
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return torch.from_numpy(np.array(self.inputs[start:stop], copy=True))

    def sizes(self) -> list[int]:
        """Batch sizes."""
        return [int(b - a) for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


class InputStore:
    """Recorded rounds in memory (per process) and on disk (``<folder>/<node>.r<round>.*``).

    A Ray actor that served the node before finds the round in memory; another actor, or a
    fresh deployment process, memory-maps it from disk.
    """

    _memory: OrderedDict[str, RecordedRound] = OrderedDict()

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def put(
        self, node: str, server_round: int, inputs: list[torch.Tensor], digests: list[str]
    ) -> RecordedRound:
        """Store a round's inputs (replacing older rounds of the same node)."""
        shapes = {tuple(x.shape[1:]) for x in inputs}
        if len(shapes) > 1:
            raise ConfigError(
                f"feature_model inputs must have the same shape apart from the batch size, got {sorted(shapes)}"
            )
        stacked = torch.cat(inputs).numpy() if inputs else np.zeros((0,), dtype=np.float32)
        offsets = np.cumsum([0] + [len(x) for x in inputs]).astype(np.int64)
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob(f"{node}.r*"):
            old.unlink(missing_ok=True)
        key = f"{node}.r{server_round}"
        np.save(self.folder / f"{key}.inputs.npy", stacked)
        np.savez(self.folder / f"{key}.meta.npz", offsets=offsets, digests=np.array(digests, dtype=str))
        recorded = RecordedRound(stacked, offsets, list(digests))
        self._remember(key, recorded)
        return recorded

    def get(self, node: str, server_round: int) -> RecordedRound | None:
        """A stored round, or ``None``."""
        key = f"{node}.r{server_round}"
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        path = self.folder / f"{key}.inputs.npy"
        if not path.exists():
            return None
        inputs = np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(self.folder / f"{key}.meta.npz", allow_pickle=False) as meta:
            recorded = RecordedRound(inputs, meta["offsets"], [str(d) for d in meta["digests"]])
        self._remember(key, recorded)
        return recorded

    def _remember(self, key: str, recorded: RecordedRound) -> None:
        self._memory[key] = recorded
        while len(self._memory) > 4:
            self._memory.popitem(last=False)


def replay_features(model: nn.Module, x: torch.Tensor, seed: int) -> np.ndarray:
    """Features of one batch (no gradient, buffers untouched), as sent to the host."""
    torch.manual_seed(seed)
    with torch.no_grad(), frozen_buffers(model):
        out = model(x)
    return out.detach().cpu().numpy()


def replay_backward(model: nn.Module, x: torch.Tensor, grad: np.ndarray, seed: int) -> None:
    """Recompute one batch's forward pass (same seed) and back-propagate ``grad`` into it."""
    torch.manual_seed(seed)
    out = model(x)
    grad_tensor = torch.from_numpy(np.asarray(grad, dtype=np.float32)).to(out.dtype)
    if tuple(grad_tensor.shape) != tuple(out.shape):
        raise ConfigError(
            f"gradient of shape {tuple(grad_tensor.shape)} for features of shape {tuple(out.shape)}"
        )
    out.backward(grad_tensor)

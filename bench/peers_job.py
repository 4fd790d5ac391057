"""The two-party job of ``bench/vertical_peers.py``, shared word for word by both frameworks.

Pure torch and numpy: alphafed-flwr's task scripts (``peers_host.py``,
``peers_collaborator.py``) import it, and the bench copies it into the NVFlare job it
generates, so both sides train the same models on the same data in the same order. It
imports nothing of alphafed-flwr (the NVFlare venv does not have it), so its bottom CNN
restates the shape of ``simulations/mnist/split_mnist.py``'s on purpose:

- MNIST in torchvision's layout, read from its IDX files; each image split down the middle:
  the label holder keeps columns 0-13, the other party columns 14-27;
- a small CNN bottom model per party (64 features), an MLP top model (128 -> 64 -> 10) at
  the label holder, each seeded so both frameworks start from the same weights;
- Adam (lr 1e-3) per model, batch 128, a new hash-shuffled order of the training samples
  every epoch;
- the torch threads fixed from ``$PEERS_THREADS`` in every process that imports this module;
- ``EpochClock``: the timestamps both frameworks' epoch times come from (one JSON line each,
  appended to ``$PEERS_CLOCK``, on the system-wide monotonic clock).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

THREADS_ENV = "PEERS_THREADS"
CLOCK_ENV = "PEERS_CLOCK"
LIMIT_ENV = {True: "PEERS_TRAIN", False: "PEERS_TEST"}  # sample limits of dry runs
TEST_ID_OFFSET = 100_000  # test sample i has ID 100000 + i
BATCH_SIZE = 128
TEST_BATCH_SIZE = 1000
LEARNING_RATE = 1e-3
WIDTH = 14  # columns of the label holder's half; the other party holds the rest
OURS, NVFLARE = "alphafed-flwr", "nvflare"  # the sides in a clock file
SEEDS = {"left": 1, "right": 2, "top": 3}  # per model, so both frameworks start alike
MEAN, STD = 0.1307, 0.3081  # torchvision's MNIST normalisation


def configure_threads() -> int:
    """Set torch's intra-op threads from ``$PEERS_THREADS`` (if set); return the count in use."""
    wanted = os.environ.get(THREADS_ENV)
    if wanted:
        torch.set_num_threads(int(wanted))
    return torch.get_num_threads()


configure_threads()


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (``.gz`` or plain) as a uint8 array of its declared shape."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} values, but the header declares {shape}")
    return data.reshape(shape)


def _idx_file(raw: Path, name: str) -> Path:
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{raw / name}[.gz] is missing: give a folder in torchvision's MNIST layout")


def load_split(data_dir: str | Path, train: bool, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images ``(N, 1, 28, 28)`` and labels of MNIST's training or test split.

    ``limit`` keeps the first ``limit`` samples.
    """
    raw = Path(data_dir) / "MNIST" / "raw"
    prefix = "train" if train else "t10k"
    images = read_idx(_idx_file(raw, f"{prefix}-images-idx3-ubyte"))[:limit]
    labels = read_idx(_idx_file(raw, f"{prefix}-labels-idx1-ubyte"))[:limit]
    if len(images) != len(labels):
        raise ValueError(f"{raw}: {len(images)} {prefix} images but {len(labels)} labels")
    x = (torch.from_numpy(images.astype(np.float32) / 255.0) - MEAN) / STD
    return x.unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


@functools.lru_cache(maxsize=4)
def cached_split(data_dir: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``load_split`` limited by ``$PEERS_TRAIN`` / ``$PEERS_TEST``, loaded once per process."""
    limit = os.environ.get(LIMIT_ENV[train])
    return load_split(data_dir, train, int(limit) if limit else None)


def sample_ids(data_dir: str) -> list[str]:
    """A party's IDs: training samples ``0..``, then test samples from ``TEST_ID_OFFSET``."""
    train = len(cached_split(data_dir, True)[1])
    test = len(cached_split(data_dir, False)[1])
    return [str(i) for i in range(train)] + [str(TEST_ID_OFFSET + i) for i in range(test)]


def split_ids(ids: Iterable[object]) -> tuple[set[int], set[int]]:
    """Training IDs (below ``TEST_ID_OFFSET``) and test IDs, as ints."""
    numbers = {int(str(i)) for i in ids}
    return {i for i in numbers if i < TEST_ID_OFFSET}, {i for i in numbers if i >= TEST_ID_OFFSET}


def left_half(images: torch.Tensor) -> torch.Tensor:
    """The label holder's columns."""
    return images[..., :WIDTH]


def right_half(images: torch.Tensor) -> torch.Tensor:
    """The other party's columns."""
    return images[..., WIDTH:]


class BottomCNN(nn.Module):
    """A party's bottom model over its 28 x 14 half: two small conv layers, 64 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc = nn.Linear(32 * 7 * 3, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))


class TopMLP(nn.Module):
    """The label holder's top model over both parties' 128 features (log-probabilities)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(128, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.out(F.relu(self.hidden(x))), dim=-1)


def build(part: str) -> nn.Module:
    """The seeded model of ``part`` (``left``, ``right``: bottom models; ``top``)."""
    torch.manual_seed(SEEDS[part])
    return TopMLP() if part == "top" else BottomCNN()


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """Adam, lr 1e-3."""
    return torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)


def epoch_order(ids: Iterable[int], epoch: int) -> list[int]:
    """The training sample IDs in the order of ``epoch`` (1-based), the same on every party."""
    return sorted(ids, key=lambda i: hashlib.sha256(f"{epoch}:{i}".encode()).digest())


def batches(indices: list[int], size: int = BATCH_SIZE) -> Iterator[list[int]]:
    """Consecutive slices of ``indices``."""
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def batch_count(count: int, size: int = BATCH_SIZE) -> int:
    """Batches per epoch."""
    return -(-count // size)


class EpochClock:
    """Appends ``{"side", "epoch", "event", "t"}`` lines to ``$PEERS_CLOCK`` (no-op without it).

    Events: ``start`` when the loop driver starts an epoch's first batch, ``step`` when the
    label holder has updated its models on a batch (an epoch's time is its last ``step``
    minus its ``start``), ``threads`` when a party builds its model.
    """

    def __init__(self, side: str) -> None:
        self.side = side
        self.path = os.environ.get(CLOCK_ENV)

    def mark(self, epoch: int, event: str, **extra: object) -> None:
        """Record ``event`` of ``epoch`` now."""
        if self.path:
            line = json.dumps({"side": self.side, "epoch": epoch, "event": event, "t": time.monotonic(), **extra})
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(line + "\n")

    def threads(self, party: str) -> None:
        """Record the torch threads of this process (``party``), for the bench to check."""
        self.mark(0, "threads", party=party, pid=os.getpid(), threads=configure_threads())


def threads_used(path: str | Path, side: str) -> dict[str, set[int]]:
    """Per party of ``side`` in a clock file: the torch thread counts its processes reported."""
    found: dict[str, set[int]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event["side"] == side and event["event"] == "threads":
            found.setdefault(event["party"], set()).add(int(event["threads"]))
    return found


def epoch_seconds(path: str | Path, side: str) -> dict[int, float]:
    """Per epoch of ``side`` in a clock file: last ``step`` minus ``start``."""
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event["side"] != side:
            continue
        epoch, t = int(event["epoch"]), float(event["t"])
        if event["event"] == "start":
            starts[epoch] = min(t, starts.get(epoch, t))
        elif event["event"] == "step":
            ends[epoch] = max(t, ends.get(epoch, t))
    return {epoch: ends[epoch] - starts[epoch] for epoch in sorted(starts) if epoch in ends}


def train_in_one_process(data_dir: str, epochs: int) -> list[dict[str, float]]:
    """The job in plain PyTorch in one process (no framework): per epoch, its seconds
    (the training loop's wall time) and the test loss and accuracy.

    The same updates, in the same order, as both frameworks' split runs at one batch per
    exchange: the reference their accuracies are checked against.
    """
    images, labels = cached_split(data_dir, True)
    test_images, test_labels = cached_split(data_dir, False)
    models = {part: build(part) for part in ("left", "right", "top")}
    optimizers = [optimizer(model) for model in models.values()]
    results = []
    for epoch in range(1, epochs + 1):
        start = time.monotonic()
        for ids in batches(epoch_order(range(len(images)), epoch)):
            index = torch.tensor(ids)
            fused = torch.cat((models["left"](left_half(images[index])), models["right"](right_half(images[index]))), 1)
            for opt in optimizers:
                opt.zero_grad()
            F.nll_loss(models["top"](fused), labels[index]).backward()
            for opt in optimizers:
                opt.step()
        seconds = time.monotonic() - start
        loss, correct = 0.0, 0
        with torch.no_grad():
            for ids in batches(list(range(len(test_images))), TEST_BATCH_SIZE):
                index = torch.tensor(ids)
                fused = torch.cat((models["left"](left_half(test_images[index])),
                                   models["right"](right_half(test_images[index]))), 1)
                out = models["top"](fused)
                loss += F.nll_loss(out, test_labels[index], reduction="sum").item()
                correct += int((out.argmax(1) == test_labels[index]).sum())
        total = len(test_images)
        results.append({"seconds": seconds, "loss": loss / total, "accuracy": correct / total})
    return results

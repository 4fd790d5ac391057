"""Shared pieces of the breast-cancer HeteroNN example (FATE's standard hetero benchmark).

scikit-learn's Wisconsin breast-cancer table (569 patients, 30 columns, label 1 = benign)
ships with the package, so the example runs offline. The columns are split between three
parties: the host holds the labels and five columns, collaborator A fifteen, collaborator B
ten. Each party holds a different 90% of the patients (seeded per party), so the parties
must find their common patients with the private set intersection first; here about 73% of
the patients are common. In a real deployment each party reads its own table instead of
``party_rows``; nothing else changes.

Every party standardizes its own columns with the mean and standard deviation of its own
training rows, and seeds its model's initialization with its key (so that
``bench/vertical_parties.py`` can train the same model centrally from the same weights).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

#: The columns each party holds (scikit-learn's column order).
PARTY_COLUMNS = {
    "host": range(0, 5),  # mean radius, texture, perimeter, area, smoothness
    "collaborator-a": range(5, 20),  # the other five "mean" columns and the ten "error" columns
    "collaborator-b": range(20, 30),  # the ten "worst" columns
}
FEATURES = 8  # each party's feature model outputs 8 values
TEST_SHARE = 0.25


@functools.lru_cache(maxsize=1)
def table() -> tuple[np.ndarray, np.ndarray]:
    """The whole table (float32 features, int64 labels), loaded once per process."""
    data = load_breast_cancer()
    return data.data.astype(np.float32), data.target.astype(np.int64)


def sample_id(row: int) -> str:
    """A patient's ID."""
    return f"BC-{row:03d}"


def row_of(sample: str) -> int:
    """The table row of a patient ID."""
    return int(sample[3:])


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def party_ids(party: str, share: float = 0.9, num_rows: int | None = None) -> list[str]:
    """The IDs ``party`` holds: ``share`` of the first ``num_rows`` rows, chosen with a per-party seed."""
    rows = num_rows or len(table()[0])
    keep = np.random.default_rng(_digest(party)).permutation(rows)[: round(share * rows)]
    return [sample_id(int(row)) for row in sorted(keep)]


def split_ids(id_intersection: set) -> tuple[set, set]:
    """Training and test IDs (a hash of the ID decides: the same on every party)."""
    test = {i for i in id_intersection if _digest(f"split:{i}") % 1000 < TEST_SHARE * 1000}
    return set(id_intersection) - test, test


def party_rows(party: str, ids: list[str]) -> torch.Tensor:
    """``party``'s columns of the rows ``ids``."""
    features, _ = table()
    rows = [row_of(i) for i in ids]
    return torch.from_numpy(features[np.ix_(rows, list(PARTY_COLUMNS[party]))])


def labels_of(ids: list[str]) -> torch.Tensor:
    """The labels of ``ids`` (only the host calls this)."""
    return torch.from_numpy(table()[1][[row_of(i) for i in ids]])


def standardizer(party: str, train_ids: set) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of ``party``'s columns over its training rows."""
    x = party_rows(party, sorted(train_ids))
    return x.mean(0), x.std(0).clamp_min(1e-6)


def round_order(ids: set, current_round: int) -> list[str]:
    """The same shuffled order of the training IDs on every party, new in every round."""
    return sorted(ids, key=lambda i: hashlib.sha256(f"{current_round}:{i}".encode()).digest())


def batches(ids: list[str], batch_size: int):
    """Consecutive slices of ``ids``."""
    for start in range(0, len(ids), batch_size):
        yield ids[start : start + batch_size]


def feature_model(party: str) -> nn.Module:
    """``party``'s feature model (one hidden layer), initialized from a seed of its key."""
    torch.manual_seed(_digest(f"model:{party}") % 2**31)
    width = len(PARTY_COLUMNS[party])
    return nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, FEATURES), nn.ReLU())


def infer_model(parties: int = 3) -> nn.Module:
    """The host's infer model: one logit over every party's features."""
    torch.manual_seed(_digest("model:infer") % 2**31)
    return nn.Linear(FEATURES * parties, 1)

"""The vertical task of ``bench/psi.py``: a host and one collaborator with ``PSI_BENCH_IDS``
IDs each (default 1,000,000), half of them in common. Training is one round on 64 of the
common IDs (``split_dataset`` keeps those), so the run is the PSI plus a token round.

    python -m alphafed_flwr.server --host bench/psi_task.py:host --collaborators 1 ...
    python -m alphafed_flwr.client --collaborator bench/psi_task.py:collaborator ...
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn, optim

from alphafed.hetero_nn import HeteroNNCollaboratorScheduler, HeteroNNHostScheduler

IDS = int(os.environ.get("PSI_BENCH_IDS", "1000000"))


def features(ids: list[str], width: int = 4) -> torch.Tensor:
    """Deterministic toy features of IDs."""
    codes = torch.tensor([zlib.crc32(i.encode()) for i in ids], dtype=torch.float64)
    return torch.stack([torch.sin(codes * (k + 1)) for k in range(width)], 1).float()


def batches(ids: set[str], size: int = 16) -> Iterator[list[str]]:
    ordered = sorted(ids)
    for i in range(0, len(ordered), size):
        yield ordered[i : i + size]


def token_split(id_intersection: list[str]) -> tuple[set[str], set[str]]:
    keep = sorted(id_intersection)[:64]
    return set(keep[:32]), set(keep[32:])


class PsiHost(HeteroNNHostScheduler):
    """IDs ``id-0000000`` .. ``id-{IDS-1}``."""

    def load_local_ids(self) -> list[str]:
        return [f"id-{i:07d}" for i in range(IDS)]

    def split_dataset(self, id_intersection):  # noqa: ANN001, ANN201
        return token_split(id_intersection)

    def build_feature_model(self) -> nn.Module:
        return nn.Linear(4, 2)

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return optim.SGD(feature_model.parameters(), lr=0.1)

    def build_infer_model(self) -> nn.Module:
        return nn.Linear(4, 2)

    def build_infer_optimizer(self, infer_model: nn.Module) -> optim.Optimizer:
        return optim.SGD(infer_model.parameters(), lr=0.1)

    def _batches(self, feature_model, ids):  # noqa: ANN001, ANN202
        for batch in batches(ids):
            x = features(batch)
            yield feature_model(x), (x[:, 0] > 0).long()

    def iterate_train_feature(self, feature_model, train_ids):  # noqa: ANN001, ANN201
        return self._batches(feature_model, train_ids)

    def iterate_test_feature(self, feature_model, test_ids):  # noqa: ANN001, ANN201
        return self._batches(feature_model, test_ids)

    def train_a_batch(self, feature_projection, labels) -> None:  # noqa: ANN001
        fused = torch.cat([feature_projection["host"], feature_projection["c1"]], 1)
        self.optimizer.zero_grad()
        F.cross_entropy(self.infer_model(fused), labels).backward()
        self.optimizer.step()

    def test(self, batched_feature_projections, batched_labels):  # noqa: ANN001, ANN201
        correct = total = 0
        for projection, labels in zip(batched_feature_projections, batched_labels, strict=True):
            fused = torch.cat([projection["host"], projection["c1"]], 1)
            correct += (self.infer_model(fused).argmax(1) == labels).sum().item()
            total += len(labels)
        return {"accuracy": correct / total}


class PsiCollaborator(HeteroNNCollaboratorScheduler):
    """IDs ``id-{IDS/2}`` .. ``id-{3*IDS/2-1}``: half of them are the host's."""

    def load_local_ids(self) -> list[str]:
        return [f"id-{i:07d}" for i in range(IDS // 2, IDS // 2 + IDS)]

    def split_dataset(self, id_intersection):  # noqa: ANN001, ANN201
        return token_split(id_intersection)

    def build_feature_model(self) -> nn.Module:
        return nn.Linear(4, 2)

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return optim.SGD(feature_model.parameters(), lr=0.1)

    def _batches(self, feature_model, ids):  # noqa: ANN001, ANN202
        for batch in batches(ids):
            yield feature_model(features(batch)[:, [1, 2, 3, 0]])

    def iterate_train_feature(self, feature_model, train_ids):  # noqa: ANN001, ANN201
        return self._batches(feature_model, train_ids)

    def iterate_test_feature(self, feature_model, test_ids):  # noqa: ANN001, ANN201
        return self._batches(feature_model, test_ids)


host = PsiHost(feature_key="host", max_rounds=1)
collaborator = PsiCollaborator(feature_key="c1")

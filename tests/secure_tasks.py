"""Small secure HeteroNN schedulers on synthetic data (importable by the tests and by Ray)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn, optim
from vertical_tasks import LABELS, N, X_LEFT, X_RIGHT, collaborator_model, host_model, infer_model, ordered, sgd

from alphafed.hetero_nn import SecureHeteroNNCollaboratorScheduler, SecureHeteroNNHostScheduler
from alphafed_flwr.secure_layer import TEST_PARAMS

HOST_OUT, COLLAB_OUT, LR = 2, 4, 0.05  # projections 3 -> 2 (host) and 3 -> 4 (collaborator)
CONFIG = [("host", 3, HOST_OUT), ("c1", 3, COLLAB_OUT)]


class SecureHost(SecureHeteroNNHostScheduler):
    """Left columns and labels; fuses the two projections (2 + 4 inputs of the infer model)."""

    ckks_params = TEST_PARAMS

    def __init__(self, batch_size: int = 4, config: list | None = None, **kwargs) -> None:  # noqa: ANN003
        super().__init__("host", config or CONFIG, LR, **kwargs)
        self.batch_size = batch_size
        self.keys = [key for key, _, _ in self.project_layer_config]

    def load_local_ids(self) -> list[str]:
        return [str(i) for i in range(N)]

    def split_dataset(self, id_intersection):  # noqa: ANN001, ANN201
        ids = sorted(int(i) for i in id_intersection)
        return set(ids[:16]), set(ids[16:])

    def build_feature_model(self) -> nn.Module:
        return host_model()

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return sgd(feature_model)

    def build_infer_model(self) -> nn.Module:
        return infer_model(sum(out for _, _, out in self.project_layer_config))

    def build_infer_optimizer(self, infer_model: nn.Module) -> optim.Optimizer:
        return sgd(infer_model)

    def _batches(self, feature_model, ids):  # noqa: ANN001, ANN202
        for batch in ordered(ids, self.batch_size):
            index = torch.tensor(batch)
            yield feature_model(X_LEFT[index]), LABELS[index], batch

    def iterate_train_feature(self, feature_model, train_ids):  # noqa: ANN001, ANN201
        return self._batches(feature_model, train_ids)

    def iterate_test_feature(self, feature_model, test_ids):  # noqa: ANN001, ANN201
        return self._batches(feature_model, test_ids)

    def train_a_batch(self, feature_projection, labels) -> None:  # noqa: ANN001
        fused = torch.cat([feature_projection[key] for key in self.keys], 1)
        self.optimizer.zero_grad()
        F.cross_entropy(self.infer_model(fused), labels).backward()
        self.optimizer.step()

    def run_test(self, batched_feature_projections, batched_labels):  # noqa: ANN001, ANN201
        correct = total = 0
        for projection, labels in zip(batched_feature_projections, batched_labels, strict=True):
            fused = torch.cat([projection[key] for key in self.keys], 1)
            correct += (self.infer_model(fused).argmax(1) == labels).sum().item()
            total += len(labels)
        return {"accuracy": correct / total}


class SecureCollaborator(SecureHeteroNNCollaboratorScheduler):
    """Right columns, no labels."""

    def __init__(self, batch_size: int = 4, lr: float = LR, feature_key: str = "c1") -> None:
        super().__init__(feature_key, lr)
        self.batch_size = batch_size

    def load_local_ids(self) -> list[int]:
        return list(range(N))

    def split_dataset(self, id_intersection):  # noqa: ANN001, ANN201
        ids = sorted(int(i) for i in id_intersection)
        return set(ids[:16]), set(ids[16:])

    def build_feature_model(self) -> nn.Module:
        return collaborator_model()

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return sgd(feature_model)

    def _batches(self, feature_model, ids):  # noqa: ANN001, ANN202
        for batch in ordered(ids, self.batch_size):
            yield feature_model(X_RIGHT[torch.tensor(batch)]), batch

    def iterate_train_feature(self, feature_model, train_ids):  # noqa: ANN001, ANN201
        return self._batches(feature_model, train_ids)

    def iterate_test_feature(self, feature_model, test_ids):  # noqa: ANN001, ANN201
        return self._batches(feature_model, test_ids)

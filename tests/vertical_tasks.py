"""Small vertical schedulers on synthetic data (importable by the tests and by Ray actors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn, optim

from alphafed.hetero_nn import HeteroNNCollaboratorScheduler, HeteroNNHostScheduler

N, LEFT, RIGHT = 24, 4, 3
GEN = torch.Generator().manual_seed(0)
X_LEFT = torch.randn(N, LEFT, generator=GEN)
X_RIGHT = torch.randn(N, RIGHT, generator=GEN)
LABELS = (X_LEFT[:, 0] + X_RIGHT[:, 0] > 0).long()


def host_model(batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(11)
    norm = [nn.BatchNorm1d(3)] if batch_norm else []
    return nn.Sequential(nn.Linear(LEFT, 3), *norm, nn.Dropout(0.3))


def collaborator_model(batch_norm: bool = False, seed: int = 12) -> nn.Module:
    torch.manual_seed(seed)
    norm = [nn.BatchNorm1d(3)] if batch_norm else []
    return nn.Sequential(nn.Linear(RIGHT, 3), *norm, nn.ReLU(), nn.Dropout(0.5))


def infer_model(width: int = 6) -> nn.Module:
    torch.manual_seed(13)
    return nn.Linear(width, 2)


def sgd(model: nn.Module) -> optim.Optimizer:
    return optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def ordered(ids, batch_size: int):  # noqa: ANN001, ANN201
    ids = sorted(int(i) for i in ids)
    return [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]


class Host(HeteroNNHostScheduler):
    def __init__(self, batch_size: int = 4, yield_ids: bool = False, collaborators: int = 1,
                 batch_norm: bool = False, **kwargs) -> None:  # noqa: ANN003
        super().__init__(feature_key=kwargs.pop("feature_key", "host"), **kwargs)
        self.width = 3 + 3 * collaborators
        self.batch_size = batch_size
        self.yield_ids = yield_ids
        self.batch_norm = batch_norm

    def load_local_ids(self) -> list[str]:
        return [str(i) for i in range(N)]

    def split_dataset(self, id_intersection):  # noqa: ANN001, ANN201
        ids = sorted(int(i) for i in id_intersection)
        return set(ids[:16]), set(ids[16:])

    def build_feature_model(self) -> nn.Module:
        return host_model(self.batch_norm)

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return sgd(feature_model)

    def build_infer_model(self) -> nn.Module:
        return infer_model(self.width)

    def build_infer_optimizer(self, infer_model: nn.Module) -> optim.Optimizer:
        return sgd(infer_model)

    def _batches(self, feature_model, ids):  # noqa: ANN001, ANN202
        for batch in ordered(ids, self.batch_size):
            index = torch.tensor(batch)
            item = (feature_model(X_LEFT[index]), LABELS[index])
            yield (*item, batch) if self.yield_ids else item

    def iterate_train_feature(self, feature_model, train_ids):  # noqa: ANN001, ANN201
        return self._batches(feature_model, train_ids)

    def iterate_test_feature(self, feature_model, test_ids):  # noqa: ANN001, ANN201
        return self._batches(feature_model, test_ids)

    def train_a_batch(self, feature_projection, labels) -> None:  # noqa: ANN001
        keys = sorted(k for k in feature_projection if k != self.feature_key)
        fused = torch.cat([feature_projection[self.feature_key]] + [feature_projection[k] for k in keys], 1)
        self.optimizer.zero_grad()
        F.cross_entropy(self.infer_model(fused), labels).backward()
        self.optimizer.step()

    def test(self, batched_feature_projections, batched_labels):  # noqa: ANN001, ANN201
        correct = total = 0
        for projection, labels in zip(batched_feature_projections, batched_labels, strict=True):
            keys = sorted(k for k in projection if k != self.feature_key)
            fused = torch.cat([projection[self.feature_key]] + [projection[k] for k in keys], 1)
            correct += (self.infer_model(fused).argmax(1) == labels).sum().item()
            total += len(labels)
        return {"accuracy": correct / total}


class Collaborator(HeteroNNCollaboratorScheduler):
    def __init__(self, feature_key: str = "c1", batch_size: int = 4, yield_ids: bool = False,
                 drop_last_batch: bool = False, reverse: bool = False, ids: range = range(N),
                 batch_norm: bool = False, seed: int = 12, is_feature_trainable: bool = True) -> None:
        super().__init__(feature_key=feature_key, is_feature_trainable=is_feature_trainable)
        self.batch_norm = batch_norm
        self.seed = seed
        self.batch_size = batch_size
        self.yield_ids = yield_ids
        self.drop_last_batch = drop_last_batch
        self.reverse = reverse
        self.ids = ids

    def load_local_ids(self) -> list[int]:
        return list(self.ids)  # ints: the PSI compares them as strings

    def split_dataset(self, id_intersection):  # noqa: ANN001, ANN201
        ids = sorted(int(i) for i in id_intersection)
        return set(ids[:16]), set(ids[16:])

    def build_feature_model(self) -> nn.Module:
        return collaborator_model(self.batch_norm, self.seed)

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return sgd(feature_model)

    def _batches(self, feature_model, ids, train):  # noqa: ANN001, ANN202
        batches = ordered(ids, self.batch_size)
        if train and self.drop_last_batch:
            batches = batches[:-1]
        for batch in batches:
            if self.reverse:
                batch = batch[::-1]
            features = feature_model(X_RIGHT[torch.tensor(batch)])
            yield (features, batch) if self.yield_ids else features

    def iterate_train_feature(self, feature_model, train_ids):  # noqa: ANN001, ANN201
        return self._batches(feature_model, train_ids, True)

    def iterate_test_feature(self, feature_model, test_ids):  # noqa: ANN001, ANN201
        return self._batches(feature_model, test_ids, False)

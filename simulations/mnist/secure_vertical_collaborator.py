"""The collaborator of the secure vertical MNIST task (right halves, no labels); it holds
the CKKS keys and its share of the projection."""

from __future__ import annotations

import torch
from secure_mnist import PROJECT_LR, HalfNet20
from split_mnist import TEST_ID_OFFSET, batches, load, local_ids, round_order, split_ids
from torch import nn, optim

from alphafed.hetero_nn import SecureHeteroNNCollaboratorScheduler


class SecureMnistCollaborator(SecureHeteroNNCollaboratorScheduler):
    """Right half of each image."""

    def __init__(self, batch_size: int = 128, num_train: int | None = None, num_test: int | None = None,
                 schedule_timeout: int = 120) -> None:
        super().__init__(feature_key="collaborator", project_layer_lr=PROJECT_LR, schedule_timeout=schedule_timeout)
        self.batch_size = batch_size
        self.num_train = num_train
        self.num_test = num_test

    def load_local_ids(self) -> list[str]:
        return local_ids(self.task_id, 0, self.num_train, self.num_test)

    def split_dataset(self, id_intersection: set) -> tuple[set, set]:
        return split_ids(id_intersection)

    def build_feature_model(self) -> nn.Module:
        return HalfNet20()

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return optim.Adam(feature_model.parameters(), lr=1e-3)

    def iterate_train_feature(self, feature_model: nn.Module, train_ids: set):
        images, _ = load(self.task_id, train=True)
        for ids in batches(round_order(train_ids, self.current_round), self.batch_size):
            yield feature_model(images[torch.tensor(ids), :, :, 14:]), ids

    def iterate_test_feature(self, feature_model: nn.Module, test_ids: set):
        images, _ = load(self.task_id, train=False)
        for ids in batches(sorted(test_ids), 1000):
            yield feature_model(images[torch.tensor(ids) - TEST_ID_OFFSET, :, :, 14:]), ids


scheduler = SecureMnistCollaborator()
scheduler.launch_task(task_id="secure-vertical-mnist")

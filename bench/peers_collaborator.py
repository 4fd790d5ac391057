"""The other party of ``bench/vertical_peers.py``'s job on alphafed-flwr: right halves, no labels."""

from __future__ import annotations

import peers_job as job
import torch
from torch import nn, optim

from alphafed import get_dataset_dir
from alphafed.hetero_nn import HeteroNNCollaboratorScheduler


class PeersCollaborator(HeteroNNCollaboratorScheduler):
    """Right halves of the images."""

    def __init__(self) -> None:
        super().__init__(feature_key="collaborator", schedule_timeout=60)

    def load_local_ids(self) -> list[str]:
        return job.sample_ids(get_dataset_dir(self.task_id))

    def split_dataset(self, id_intersection: set) -> tuple[set, set]:
        return job.split_ids(id_intersection)

    def build_feature_model(self) -> nn.Module:
        job.EpochClock(job.OURS).threads("collaborator")
        return job.build("right")

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return job.optimizer(feature_model)

    def iterate_train_feature(self, feature_model: nn.Module, train_ids: set):
        images, _ = job.cached_split(get_dataset_dir(self.task_id), True)
        for ids in job.batches(job.epoch_order(train_ids, self.current_round)):
            yield feature_model(job.right_half(images[torch.tensor(ids)])), ids

    def iterate_test_feature(self, feature_model: nn.Module, test_ids: set):
        images, _ = job.cached_split(get_dataset_dir(self.task_id), False)
        for ids in job.batches(sorted(test_ids), job.TEST_BATCH_SIZE):
            yield feature_model(job.right_half(images[torch.tensor(ids) - job.TEST_ID_OFFSET])), ids


scheduler = PeersCollaborator()
scheduler.launch_task(task_id="vertical-peers")

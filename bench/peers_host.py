"""The label holder of ``bench/vertical_peers.py``'s job on alphafed-flwr (the host).

Run by the bench through the simulation command (see ``peers_job.py`` for the job):

    python -m alphafed_flwr.simulation --host bench/peers_host.py \\
        --collaborator bench/peers_collaborator.py --rounds 3 --data-dir ../shared/data --out runs/peers

``$PEERS_TRAIN`` / ``$PEERS_TEST`` limit the training / test samples (dry runs).
"""

from __future__ import annotations

import peers_job as job
import torch
import torch.nn.functional as F
from torch import nn, optim

from alphafed import get_dataset_dir, logger
from alphafed.fed_avg import register_metrics
from alphafed.hetero_nn import HeteroNNHostScheduler


class PeersHost(HeteroNNHostScheduler):
    """Left halves, the labels, and the MLP top model."""

    def __init__(self, max_rounds: int = 3) -> None:
        super().__init__(feature_key="host", max_rounds=max_rounds, log_rounds=1,
                         calculation_timeout=300, schedule_timeout=60)
        self.collaborator_key = "collaborator"
        self.clock = job.EpochClock(job.OURS)

    def load_local_ids(self) -> list[str]:
        return job.sample_ids(get_dataset_dir(self.task_id))

    def split_dataset(self, id_intersection: set) -> tuple[set, set]:
        return job.split_ids(id_intersection)

    def build_feature_model(self) -> nn.Module:
        self.clock.threads("host")
        return job.build("left")

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return job.optimizer(feature_model)

    def build_infer_model(self) -> nn.Module:
        return job.build("top")

    def build_infer_optimizer(self, infer_model: nn.Module) -> optim.Optimizer:
        return job.optimizer(infer_model)

    def iterate_train_feature(self, feature_model: nn.Module, train_ids: set):
        self.clock.mark(self.current_round, "start")  # called before the round's first exchange
        return self._train_batches(feature_model, train_ids)

    def _train_batches(self, feature_model: nn.Module, train_ids: set):
        images, labels = job.cached_split(get_dataset_dir(self.task_id), True)
        for ids in job.batches(job.epoch_order(train_ids, self.current_round)):
            index = torch.tensor(ids)
            yield feature_model(job.left_half(images[index])), labels[index], ids

    def iterate_test_feature(self, feature_model: nn.Module, test_ids: set):
        images, labels = job.cached_split(get_dataset_dir(self.task_id), False)
        for ids in job.batches(sorted(test_ids), job.TEST_BATCH_SIZE):
            index = torch.tensor(ids) - job.TEST_ID_OFFSET
            yield feature_model(job.left_half(images[index])), labels[index], ids

    def train_a_batch(self, feature_projection: dict, labels: torch.Tensor) -> None:
        fused = torch.cat((feature_projection[self.feature_key], feature_projection[self.collaborator_key]), 1)
        self.optimizer.zero_grad()
        F.nll_loss(self.infer_model(fused), labels).backward()
        self.optimizer.step()
        self.clock.mark(self.current_round, "step")

    @register_metrics(name="test_results", keys=["loss", "accuracy"])
    def test(self, batched_feature_projections: list, batched_labels: list) -> None:
        loss, correct, total = 0.0, 0, 0
        for projection, labels in zip(batched_feature_projections, batched_labels, strict=True):
            out = self.infer_model(torch.cat((projection[self.feature_key], projection[self.collaborator_key]), 1))
            loss += F.nll_loss(out, labels, reduction="sum").item()
            correct += (out.argmax(1) == labels).sum().item()
            total += len(labels)
        logger.info(f"Round {self.current_round} test: loss {loss / total:.4f}, accuracy {correct / total:.2%}")
        self.get_metrics("test_results").append_metrics_item({"loss": loss / total, "accuracy": correct / total})


scheduler = PeersHost()
scheduler.launch_task(task_id="vertical-peers")

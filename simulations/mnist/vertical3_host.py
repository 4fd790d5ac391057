"""The host of the three-party vertical MNIST task: the labels and columns 0-9 of every image.

Simulation (from the repository root; add ``--data-dir ../shared/data`` for the full test set):

    python -m alphafed_flwr.simulation --host simulations/mnist/vertical3_host.py \\
        --collaborator simulations/mnist/vertical3_middle.py \\
        --collaborator simulations/mnist/vertical3_right.py --rounds 10 --out runs/vertical3
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from split_mnist import TEST_ID_OFFSET, InferModel, batches, load, local_ids, round_order, split_ids
from strips import strip, strip_model
from torch import nn, optim

from alphafed import logger
from alphafed.fed_avg import register_metrics
from alphafed.hetero_nn import HeteroNNHostScheduler


class ThreePartyMnistHost(HeteroNNHostScheduler):
    """The left strip of each image plus the labels."""

    def __init__(
        self,
        collaborator_keys: tuple[str, ...] = ("middle", "right"),
        batch_size: int = 128,
        num_train: int | None = None,
        num_test: int | None = None,
        max_rounds: int = 10,
        log_rounds: int = 5,
        calculation_timeout: int = 300,
        schedule_timeout: int = 120,
    ) -> None:
        super().__init__(
            feature_key="host",
            max_rounds=max_rounds,
            log_rounds=log_rounds,
            calculation_timeout=calculation_timeout,
            schedule_timeout=schedule_timeout,
        )
        self.collaborator_keys = collaborator_keys
        self.batch_size = batch_size
        self.num_train = num_train
        self.num_test = num_test

    def load_local_ids(self) -> list[str]:
        return local_ids(self.task_id, 0, self.num_train, self.num_test)

    def split_dataset(self, id_intersection: set) -> tuple[set, set]:
        return split_ids(id_intersection)

    def build_feature_model(self) -> nn.Module:
        return strip_model(self.feature_key)

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return optim.Adam(feature_model.parameters(), lr=1e-3)

    def build_infer_model(self) -> nn.Module:
        torch.manual_seed(0)
        return InferModel(width=64 * (1 + len(self.collaborator_keys)))

    def build_infer_optimizer(self, infer_model: nn.Module) -> optim.Optimizer:
        return optim.Adam(infer_model.parameters(), lr=1e-3)

    def iterate_train_feature(self, feature_model: nn.Module, train_ids: set):
        images, labels = load(self.task_id, train=True)
        for ids in batches(round_order(train_ids, self.current_round), self.batch_size):
            index = torch.tensor(ids)
            yield feature_model(strip(images[index], self.feature_key)), labels[index], ids

    def iterate_test_feature(self, feature_model: nn.Module, test_ids: set):
        images, labels = load(self.task_id, train=False)
        for ids in batches(sorted(test_ids), 1000):
            index = torch.tensor(ids) - TEST_ID_OFFSET
            yield feature_model(strip(images[index], self.feature_key)), labels[index], ids

    def fused(self, feature_projection: dict) -> torch.Tensor:
        """Every party's features side by side: the host's, then each collaborator's."""
        return torch.cat([feature_projection[k] for k in (self.feature_key, *self.collaborator_keys)], dim=1)

    def train_a_batch(self, feature_projection: dict, labels: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        F.nll_loss(self.infer_model(self.fused(feature_projection)), labels).backward()
        self.optimizer.step()

    @register_metrics(name="test_results", keys=["loss", "accuracy"])
    def test(self, batched_feature_projections: list, batched_labels: list) -> None:
        loss, correct, total = 0.0, 0, 0
        for projection, labels in zip(batched_feature_projections, batched_labels, strict=True):
            out = self.infer_model(self.fused(projection))
            loss += F.nll_loss(out, labels, reduction="sum").item()
            correct += (out.argmax(dim=1) == labels).sum().item()
            total += len(labels)
        loss, accuracy = loss / total, correct / total
        logger.info(f"Round {self.current_round} test: loss {loss:.4f}, accuracy {accuracy:.2%}")
        self.get_metrics("test_results").append_metrics_item({"loss": loss, "accuracy": accuracy})


scheduler = ThreePartyMnistHost()
scheduler.launch_task(task_id="vertical3-mnist")

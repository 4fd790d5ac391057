"""The host of the secure vertical MNIST task (labels and left halves), written the way
AlphaFed users write ``SecureHeteroNNHostScheduler`` tasks.

The collaborator's features reach the host only through the CKKS projection layer: the
host sees ``feature_projection["collaborator"]``, the features times a projection matrix of
which it holds one additive share. Simulation (from the repository root):

    python -m alphafed_flwr.simulation --host simulations/mnist/secure_vertical_host.py \\
        --collaborator simulations/mnist/secure_vertical_collaborator.py --rounds 5 --out runs/secure
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from secure_mnist import PROJECT_LAYER_CONFIG, PROJECT_LR, HalfNet20, Infer40
from split_mnist import TEST_ID_OFFSET, batches, load, local_ids, round_order, split_ids
from torch import nn, optim

from alphafed import logger
from alphafed.fed_avg import register_metrics
from alphafed.hetero_nn import SecureHeteroNNHostScheduler


class SecureMnistHost(SecureHeteroNNHostScheduler):
    """Left half of each image plus the labels."""

    def __init__(self, batch_size: int = 128, num_train: int | None = None, num_test: int | None = None,
                 max_rounds: int = 5, log_rounds: int = 5, calculation_timeout: int = 300,
                 schedule_timeout: int = 120) -> None:
        super().__init__(
            feature_key="host",
            project_layer_config=PROJECT_LAYER_CONFIG,
            project_layer_lr=PROJECT_LR,
            max_rounds=max_rounds,
            calculation_timeout=calculation_timeout,
            schedule_timeout=schedule_timeout,
            log_rounds=log_rounds,
        )
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

    def build_infer_model(self) -> nn.Module:
        return Infer40()

    def build_infer_optimizer(self, infer_model: nn.Module) -> optim.Optimizer:
        return optim.Adam(infer_model.parameters(), lr=1e-3)

    def iterate_train_feature(self, feature_model: nn.Module, train_ids: set):
        images, labels = load(self.task_id, train=True)
        for ids in batches(round_order(train_ids, self.current_round), self.batch_size):
            index = torch.tensor(ids)
            yield feature_model(images[index, :, :, :14]), labels[index], ids

    def iterate_test_feature(self, feature_model: nn.Module, test_ids: set):
        images, labels = load(self.task_id, train=False)
        for ids in batches(sorted(test_ids), 1000):
            index = torch.tensor(ids) - TEST_ID_OFFSET
            yield feature_model(images[index, :, :, :14]), labels[index], ids

    def train_a_batch(self, feature_projection: dict, labels: torch.Tensor) -> None:
        fused = torch.cat((feature_projection["host"], feature_projection["collaborator"]), dim=1)
        self.optimizer.zero_grad()
        loss = F.nll_loss(self.infer_model(fused), labels)
        loss.backward()
        self.optimizer.step()

    @register_metrics(name="test_results", keys=["loss", "accuracy"])
    def run_test(self, batched_feature_projections: list, batched_labels: list) -> None:
        loss, correct, total = 0.0, 0, 0
        for projection, labels in zip(batched_feature_projections, batched_labels, strict=True):
            out = self.infer_model(torch.cat((projection["host"], projection["collaborator"]), dim=1))
            loss += F.nll_loss(out, labels, reduction="sum").item()
            correct += (out.argmax(dim=1) == labels).sum().item()
            total += len(labels)
        loss, accuracy = loss / total, correct / total
        logger.info(f"Round {self.current_round} test: loss {loss:.4f}, accuracy {accuracy:.2%}")
        self.tb_writer.add_scalar("test_results/accuracy", accuracy, self.current_round)
        self.get_metrics("test_results").append_metrics_item({"loss": loss, "accuracy": accuracy})


scheduler = SecureMnistHost()
scheduler.launch_task(task_id="secure-vertical-mnist")

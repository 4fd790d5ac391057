"""The host of the breast-cancer HeteroNN task: the labels and five columns.

Simulation, from the repository root (three parties; the PSI finds the common patients):

    python -m alphafed_flwr.simulation --host simulations/breast_cancer/host.py \\
        --collaborator simulations/breast_cancer/collaborator_a.py \\
        --collaborator simulations/breast_cancer/collaborator_b.py --rounds 10 --out runs/breast_cancer

The test reports the AUC (and accuracy and loss) on the common patients' test rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from breast_cancer_common import (
    batches,
    feature_model,
    infer_model,
    labels_of,
    party_ids,
    party_rows,
    round_order,
    split_ids,
    standardizer,
)
from sklearn.metrics import roc_auc_score
from torch import nn, optim

from alphafed import logger
from alphafed.fed_avg import register_metrics
from alphafed.hetero_nn import HeteroNNHostScheduler


class BreastCancerHost(HeteroNNHostScheduler):
    """Labels plus the first five columns of the table."""

    def __init__(
        self,
        feature_key: str = "host",
        collaborator_keys: tuple[str, ...] = ("collaborator-a", "collaborator-b"),
        batch_size: int = 32,
        num_rows: int | None = None,
        max_rounds: int = 10,
        log_rounds: int = 5,
        calculation_timeout: int = 300,
        schedule_timeout: int = 120,
    ) -> None:
        super().__init__(
            feature_key=feature_key,
            max_rounds=max_rounds,
            log_rounds=log_rounds,
            calculation_timeout=calculation_timeout,
            schedule_timeout=schedule_timeout,
        )
        self.collaborator_keys = collaborator_keys
        self.batch_size = batch_size
        self.num_rows = num_rows

    def load_local_ids(self) -> list[str]:
        return party_ids(self.feature_key, num_rows=self.num_rows)

    def split_dataset(self, id_intersection: set) -> tuple[set, set]:
        return split_ids(id_intersection)

    def build_feature_model(self) -> nn.Module:
        return feature_model(self.feature_key)

    def build_feature_optimizer(self, feature_model: nn.Module) -> optim.Optimizer:
        return optim.Adam(feature_model.parameters(), lr=1e-2)

    def build_infer_model(self) -> nn.Module:
        return infer_model(1 + len(self.collaborator_keys))

    def build_infer_optimizer(self, infer_model: nn.Module) -> optim.Optimizer:
        return optim.Adam(infer_model.parameters(), lr=1e-2)

    def _batches(self, feature_model: nn.Module, ids: list[str], batch_size: int):
        mean, std = standardizer(self.feature_key, self.train_ids)
        for batch in batches(ids, batch_size):
            x = (party_rows(self.feature_key, batch) - mean) / std
            yield feature_model(x), labels_of(batch), batch

    def iterate_train_feature(self, feature_model: nn.Module, train_ids: set):
        yield from self._batches(feature_model, round_order(train_ids, self.current_round), self.batch_size)

    def iterate_test_feature(self, feature_model: nn.Module, test_ids: set):
        yield from self._batches(feature_model, sorted(test_ids), 1000)

    def logits(self, feature_projection: dict) -> torch.Tensor:
        """The infer model over the host's features, then each collaborator's."""
        keys = (self.feature_key, *self.collaborator_keys)
        return self.infer_model(torch.cat([feature_projection[k] for k in keys], dim=1)).squeeze(1)

    def train_a_batch(self, feature_projection: dict, labels: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(self.logits(feature_projection), labels.float())
        loss.backward()
        self.optimizer.step()

    @register_metrics(name="test_results", keys=["loss", "accuracy", "auc"])
    def test(self, batched_feature_projections: list, batched_labels: list) -> None:
        logits = torch.cat([self.logits(p) for p in batched_feature_projections])
        labels = torch.cat(batched_labels)
        loss = F.binary_cross_entropy_with_logits(logits, labels.float()).item()
        accuracy = ((logits > 0).long() == labels).float().mean().item()
        auc = float(roc_auc_score(labels.numpy(), logits.numpy()))
        logger.info(f"Round {self.current_round} test: loss {loss:.4f}, accuracy {accuracy:.2%}, AUC {auc:.4f}")
        self.tb_writer.add_scalar("test_results/auc", auc, self.current_round)
        self.get_metrics("test_results").append_metrics_item({"loss": loss, "accuracy": accuracy, "auc": auc})


scheduler = BreastCancerHost()
scheduler.launch_task(task_id="breast-cancer")

"""The collaborators of the breast-cancer HeteroNN task: a party's columns, no labels.

``collaborator_a.py`` and ``collaborator_b.py`` create one each.
"""

from __future__ import annotations

from breast_cancer_common import (
    batches,
    feature_model,
    party_ids,
    party_rows,
    round_order,
    split_ids,
    standardizer,
)
from torch import nn, optim

from alphafed.hetero_nn import HeteroNNCollaboratorScheduler


class BreastCancerCollaborator(HeteroNNCollaboratorScheduler):
    """The columns ``breast_cancer_common.PARTY_COLUMNS[feature_key]`` of the table."""

    def __init__(
        self, feature_key: str, batch_size: int = 32, num_rows: int | None = None, schedule_timeout: int = 120
    ) -> None:
        super().__init__(feature_key=feature_key, schedule_timeout=schedule_timeout)
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

    def _batches(self, feature_model: nn.Module, ids: list[str], batch_size: int):
        mean, std = standardizer(self.feature_key, self.train_ids)
        for batch in batches(ids, batch_size):
            yield feature_model((party_rows(self.feature_key, batch) - mean) / std), batch

    def iterate_train_feature(self, feature_model: nn.Module, train_ids: set):
        yield from self._batches(feature_model, round_order(train_ids, self.current_round), self.batch_size)

    def iterate_test_feature(self, feature_model: nn.Module, test_ids: set):
        yield from self._batches(feature_model, sorted(test_ids), 1000)

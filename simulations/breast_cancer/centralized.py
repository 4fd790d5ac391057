"""The baseline: the same split model trained in one process on the same columns.

Every party's feature model, the infer model, the batches (``round_order``), the
standardization and the Adam optimizers are the example's own, so a K=1 split-learning run
must reach the same AUC. ``parties=("host",)`` trains the host alone on its five columns
(what the collaborators' columns add).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from breast_cancer_common import (
    batches,
    feature_model,
    infer_model,
    labels_of,
    party_rows,
    round_order,
    standardizer,
)
from sklearn.metrics import roc_auc_score

PARTIES = ("host", "collaborator-a", "collaborator-b")


def train_centralized(
    train_ids: set, test_ids: set, rounds: int, parties: tuple[str, ...] = PARTIES, batch_size: int = 32
) -> dict[str, float]:
    """Train for ``rounds`` epochs; return the final test ``auc``, ``accuracy`` and ``loss``."""
    models = {p: feature_model(p) for p in parties}
    infer = infer_model(len(parties))
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (*models.values(), infer)]
    scale = {p: standardizer(p, train_ids) for p in parties}

    def logits(ids: list[str]) -> torch.Tensor:
        feats = [models[p]((party_rows(p, ids) - scale[p][0]) / scale[p][1]) for p in parties]
        return infer(torch.cat(feats, dim=1)).squeeze(1)

    for epoch in range(1, rounds + 1):
        for batch in batches(round_order(train_ids, epoch), batch_size):
            for opt in optimizers:
                opt.zero_grad()
            F.binary_cross_entropy_with_logits(logits(batch), labels_of(batch).float()).backward()
            for opt in optimizers:
                opt.step()
    with torch.no_grad():
        ids = sorted(test_ids)
        out, labels = logits(ids), labels_of(ids)
    return {
        "auc": float(roc_auc_score(labels.numpy(), out.numpy())),
        "accuracy": ((out > 0).long() == labels).float().mean().item(),
        "loss": F.binary_cross_entropy_with_logits(out, labels.float()).item(),
    }

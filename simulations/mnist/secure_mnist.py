"""Shared pieces of the secure vertical MNIST example (``secure_vertical_host.py``,
``secure_vertical_collaborator.py``): the split of ``split_mnist`` with 20-dimensional
features per party (the AlphaFed tutorial's width), each projected 20 -> 20 by the
interactive layer; the collaborator's projection runs under CKKS."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from split_mnist import HalfConvNet
from torch import nn

FEATURES = 20
PROJECT_LR = 0.05
#: (key, in_dim, out_dim) per party: the host's own projection runs in the clear.
PROJECT_LAYER_CONFIG = [("host", FEATURES, FEATURES), ("collaborator", FEATURES, FEATURES)]


class HalfNet20(nn.Module):
    """``HalfConvNet`` (64 features) narrowed to 20 features."""

    def __init__(self) -> None:
        super().__init__()
        self.body = HalfConvNet()
        self.head = nn.Linear(64, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Infer40(nn.Module):
    """The infer model over both parties' 20-dimensional projections."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * FEATURES, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=-1)

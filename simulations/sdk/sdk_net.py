"""A small CNN for 28x28 MNIST digits, returning log-probabilities."""

import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """Two 3x3 convolutions (8 and 16 channels) with max-pooling, then two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1)
        self.dropout = nn.Dropout(0.25)
        self.fc1 = nn.Linear(16 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(x.flatten(1))
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)

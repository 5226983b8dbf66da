"""sensor_cnn: a 1D CNN with BatchNorm over 3-axis accelerometer windows (3 x 64) -> 4 activities.

Export: fedge export examples/sensor_cnn/model.py:build --input-shape 3,64 \
            --num-classes 4 --optimizer adamw --lr 0.01 --out bundle
"""

from __future__ import annotations

import torch
from torch import nn


class SensorCNN(nn.Module):
    """Two conv blocks (conv, BatchNorm, ReLU, max-pool), a mean over time, a linear head.

    The convolutions have no bias: BatchNorm right after them removes it anyway (its gradient
    would be rounding noise, which AdamW turns into full-size steps; docs/exporter.md)."""

    def __init__(self, channels: int = 3, classes: int = 4, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(channels, width, 5, padding=2, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, 2 * width, 5, padding=2, bias=False),
            nn.BatchNorm1d(2 * width),
            nn.ReLU(),
            nn.MaxPool1d(2),
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=-1))


def build() -> nn.Module:
    """The same weights on every call (seed 0), so every export has the same content hash."""
    torch.manual_seed(0)
    return SensorCNN()

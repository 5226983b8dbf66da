"""digits_depthwise: a MobileNet-style CNN (depthwise-separable convolutions) on 8x8 digits.

Export: fedge export examples/digits_depthwise/model.py:build --input-shape 1,8,8 \
            --num-classes 10 --optimizer adamw --lr 0.01 --out bundle
"""

from __future__ import annotations

import torch
from torch import nn


def separable(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (one filter per channel) then pointwise 1x1 (mixes channels), each with
    BatchNorm and ReLU6: ~cin*9 + cin*cout weights instead of cin*cout*9. No conv bias:
    BatchNorm follows and would cancel it (its gradient is rounding noise; docs/exporter.md)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU6(),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class DepthwiseNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),  # 8x8
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            separable(16, 32),  # 8x8
            separable(32, 64, stride=2),  # 4x4
        )
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def build() -> nn.Module:
    """The same weights on every call (seed 0), so every export has the same content hash."""
    torch.manual_seed(0)
    return DepthwiseNet()

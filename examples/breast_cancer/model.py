"""breast_cancer: 30 raw measurements -> 16 -> ReLU -> one logit (benign), trained with BCE.

Export: fedge export examples/breast_cancer/model.py:build --input-shape 30 \
            --loss bce_with_logits --optimizer adamw --lr 0.01 --out bundle
"""

from __future__ import annotations

import torch
from torch import nn


def build() -> nn.Module:
    """The same weights on every call (seed 0), so every export has the same content hash."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 1))

"""diabetes_regression: 10 clinical measurements -> 32 -> ReLU -> disease progression (MSE).

Export: fedge export examples/diabetes_regression/model.py:build --input-shape 10 \
            --loss mse --optimizer adamw --lr 0.02 --weight-decay 0 --out bundle
"""

from __future__ import annotations

import torch
from torch import nn

# The model author's prior for the output: a progression score around 150 (the score's
# published range is 25..346). Starting the output there, instead of at 0, saves the rounds
# that AdamW's small steps would spend walking the bias up from 0.
PRIOR = 150.0


def build() -> nn.Module:
    """The same weights on every call (seed 0), so every export has the same content hash."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    with torch.no_grad():
        model[2].bias.fill_(PRIOR)
    return model

"""Small demo models, built deterministically so every export of them is byte-identical.

``fedge export fedge.demo.models:digits_mlp`` exports the same model the demo uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only when a model is built (fedge.demo stays torch-free)
    from torch import nn

DIGITS_FEATURES = 64  # scikit-learn's digits: 8x8 images, flattened
DIGITS_CLASSES = 10
SEED = 0


def tabular_mlp(n_features: int, n_classes: int, hidden: int = 64) -> nn.Module:
    """``n_features`` inputs -> ``hidden`` -> ReLU -> ``n_classes`` logits, from a fixed seed.

    The demo's model for every data set (digits, wine, breast_cancer); the caller's torch RNG
    is left as it was.
    """
    import torch
    from torch import nn

    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(SEED)
        model = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's RNG as it was
    return model


def digits_mlp(hidden: int = 64) -> nn.Module:
    """64 inputs -> ``hidden`` -> ReLU -> 10 logits, initialized from a fixed seed."""
    return tabular_mlp(DIGITS_FEATURES, DIGITS_CLASSES, hidden=hidden)

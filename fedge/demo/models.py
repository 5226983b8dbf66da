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


def digits_mlp(hidden: int = 64) -> nn.Module:
    """64 inputs -> ``hidden`` -> ReLU -> 10 logits, initialized from a fixed seed."""
    import torch
    from torch import nn

    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(SEED)
        model = nn.Sequential(
            nn.Linear(DIGITS_FEATURES, hidden),
            nn.ReLU(),
            nn.Linear(hidden, DIGITS_CLASSES),
        )
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's RNG as it was
    return model

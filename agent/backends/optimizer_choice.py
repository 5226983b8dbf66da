"""Which of a bundle's optimizers a round trains with, and with which hyperparameters.

A bundle carries one or more optimizers (``manifest.optimizers``, the first is the default);
the round task may name one (``config.optimizer``) and override its learning rate and weight
decay. Both backends resolve the choice here, so they refuse the same things the same way.
Optimizer state (AdamW's moments and step count) is fresh every round: each round's local
training starts from zero moments, as before the choice existed.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedge.protocol.bundle import Bundle
from fedge.protocol.errors import BundleError, FedgeError
from fedge.protocol.manifest import OptimizerSpec


class OptimizerUnavailable(FedgeError):
    """The round asks for an optimizer (or a hyperparameter) the bundle cannot run."""


@dataclass(frozen=True)
class OptimizerChoice:
    spec: OptimizerSpec  # the bundle's entry for the chosen optimizer
    learning_rate: float
    weight_decay: float  # 0 for SGD (its exported graph has none)

    @property
    def type(self) -> str:
        return self.spec.type


def choose_optimizer(
    bundle: Bundle,
    *,
    optimizer: str = "",
    learning_rate: float | None = None,
    weight_decay: float | None = None,
) -> OptimizerChoice:
    """The optimizer ``optimizer`` ("": the bundle's default) with the round's overrides
    (None: the bundle's values); OptimizerUnavailable says what the bundle carries."""
    try:
        spec = bundle.manifest.optimizer_named(optimizer)
    except BundleError as exc:
        raise OptimizerUnavailable(f"the round asks for optimizer {optimizer!r}: {exc}") from exc
    lr = float(learning_rate) if learning_rate else float(spec.lr)
    if weight_decay is None:
        wd = spec.weight_decay
    elif (refusal := spec.weight_decay_refusal(weight_decay)) is not None:
        raise OptimizerUnavailable(f"the round asks for {refusal}")
    else:
        wd = float(weight_decay)
    return OptimizerChoice(spec, lr, wd)

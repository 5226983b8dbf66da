"""``[rounds] optimizer`` and its hyperparameters, checked at start against the bundle.

The bundle carries one or more optimizers (``manifest.optimizers``, the first is the default);
the round config picks one and may override its learning rate and weight decay. A choice the
bundle cannot run is refused here, before any device is asked to train, with what it carries.
"""

from __future__ import annotations

import logging

from fedge.protocol.errors import BundleError, ConfigError
from fedge.protocol.fields import OPTIMIZER_NAMES
from fedge.protocol.manifest import Manifest, OptimizerSpec

from .config import RoundSettings

log = logging.getLogger(__name__)


def check_optimizer(rounds: RoundSettings, manifest: Manifest) -> OptimizerSpec:
    """The bundle's entry for ``rounds.optimizer``; ConfigError if the bundle cannot run it."""
    try:
        spec = manifest.optimizer_named(rounds.optimizer)
    except BundleError:
        carried = ", ".join(manifest.optimizer_types)
        hint = (
            "re-export the bundle with it: fedge export --optimizers "
            f"{','.join(manifest.optimizer_types)},{rounds.optimizer}"
            if rounds.optimizer in OPTIMIZER_NAMES
            else f"fedge knows {', '.join(OPTIMIZER_NAMES)}"
        )
        raise ConfigError(
            f"rounds.optimizer: bundle '{manifest.model_name}' carries {carried}; got "
            f"{rounds.optimizer!r} (choose one it carries, or {hint})"
        ) from None
    decay = rounds.weight_decay
    if (refusal := spec.weight_decay_refusal(decay)) is not None:
        raise ConfigError(
            f'rounds.weight_decay: {refusal} (optimizer = "adamw"), or leave '
            "rounds.weight_decay at -1 (the bundle's own)"
        )
    portable = manifest.portable
    if (
        spec.type == "adamw"
        and decay >= 0
        and decay != spec.weight_decay
        and portable is not None
        and portable.available
        and not portable.weight_decay_name
    ):
        raise ConfigError(
            f"rounds.weight_decay {decay:g}: bundle '{manifest.model_name}' was exported before "
            f"the weight decay could be chosen (its portable AdamW step has "
            f"{spec.weight_decay:g} built in); re-export it, or leave rounds.weight_decay at -1"
        )
    lr = rounds.learning_rate or spec.lr
    log.info(
        "client optimizer: %s (lr %g, weight decay %g)%s",
        spec.type,
        lr,
        spec.weight_decay if decay < 0 else decay,
        "" if rounds.optimizer else " (the bundle's default)",
    )
    return spec

"""One round of local training: the global model trained on the device's rows, as a delta.

Pure of MQTT and the agent's state: the daemon journals, aborts and offers what this returns.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedge.protocol.errors import CodecError
from fedge.protocol.messages import TrainConfig
from fedge.protocol.privacy import privatize_delta
from fedge.protocol.sqlite_samples import Samples, split_train_validation, take_rows
from fedge.protocol.tensors import check_finite

from .backends import TrainingBackend
from .local_evaluation import shaped

log = logging.getLogger(__name__)


@dataclass
class LocalUpdate:
    problem: str = ""  # why there is no delta ("training stopped: ...", "training diverged: ...")
    delta: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    num_samples: int = 0  # training rows (the update's weight)
    steps: int = 0
    loss: float = 0.0


def train_locally(
    backend: TrainingBackend,
    bundle,
    samples: Samples,
    global_params: dict[str, np.ndarray],
    config: TrainConfig,
    *,
    seed_key: str,
    validation_fraction: float,
    should_stop: Callable[[], str],
    count_seconds: Callable[[float], None],
) -> LocalUpdate:
    """Train on the training split, evaluate on the validation split, return the delta.

    ``seed_key`` (agent/seed/round) seeds the batch order; ``count_seconds`` receives the
    training time even when training fails (the daily budget counts it).
    """
    started = time.monotonic()
    train, val = split_train_validation(samples, validation_fraction, seed=0)
    if config.max_samples and len(train) > config.max_samples:
        cap = slice(0, config.max_samples)
        train.x, train.y = take_rows(train.x, cap), train.y[cap]
    check_finite(global_params)
    backend.load(
        bundle,
        learning_rate=config.learning_rate or None,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay if config.weight_decay >= 0 else None,
    )
    choice = getattr(backend, "optimizer_choice", None)
    if choice is not None:
        log.info(
            "training with %s (lr %g, weight decay %g)",
            choice.type,
            choice.learning_rate,
            choice.weight_decay,
        )
    backend.set_parameters(global_params)
    seed = int.from_bytes(hashlib.sha256(seed_key.encode()).digest()[:4], "big")
    train_started = time.monotonic()
    try:
        result = backend.train(
            shaped(train.x, bundle),
            train.y,
            epochs=config.local_epochs,
            batch_size=config.batch_size,
            seed=seed,
            should_stop=should_stop,
            proximal_mu=config.proximal_mu,  # FedProx (0 = plain local training)
            anchor=global_params,
        )
    finally:
        count_seconds(time.monotonic() - train_started)
    if result.stopped:
        return LocalUpdate(problem=f"training stopped: {result.stopped}")
    local = backend.get_parameters()
    delta = {
        name: (local[name] - global_params[name]).astype(global_params[name].dtype)
        for name in global_params
    }
    try:
        check_finite(delta)
    except CodecError as exc:
        return LocalUpdate(problem=f"training diverged: {exc}")
    if config.clip_norm > 0:  # client-level DP: clip + noise before the delta leaves
        delta = privatize_delta(
            delta, clip_norm=config.clip_norm, noise_multiplier=config.noise_multiplier
        ).delta
    metrics = {"train_loss": result.loss, "train_seconds": time.monotonic() - started}
    if len(val):
        ev = backend.evaluate(shaped(val.x, bundle), val.y)
        metrics["val_loss"] = ev.loss
        if ev.accuracy is not None:
            metrics["val_accuracy"] = ev.accuracy
        metrics["val_samples"] = float(ev.samples)
    return LocalUpdate("", delta, metrics, len(train), result.steps, result.loss)

"""Federated evaluation on the device: the round's global model on the local validation rows."""

from __future__ import annotations

import numpy as np

from fedge.protocol.bundle import Bundle
from fedge.protocol.sqlite_samples import Features, Samples, split_train_validation

from .backends import TrainingBackend


def input_shape(bundle: Bundle) -> list[int]:
    """The model input's shape without the batch dimension, from the bundle's manifest."""
    return list(bundle.manifest.input.sample_shape)


def shaped(x: Features, bundle: Bundle) -> Features:
    """``x`` as the backend feeds it: one array reshaped to ``[n, *input shape]``; several
    inputs (a tuple) come shaped per input from ``conform_samples``."""
    if isinstance(x, tuple):
        return x
    return x.reshape([len(x)] + input_shape(bundle))


def evaluate_global(
    backend: TrainingBackend,
    bundle: Bundle,
    global_params: dict[str, np.ndarray],
    samples: Samples,
    validation_fraction: float,
) -> tuple[int, dict[str, float]]:
    """(rows evaluated, metrics) of ``global_params`` on the device's validation split (the
    same fixed-seed split training uses); all rows when the split is empty (a small device).

    The metrics are the task's (``fedge.protocol.task_metrics``, computed by the backend), each
    as ``val_<name>``, plus ``val_loss``."""
    _train, val = split_train_validation(samples, validation_fraction, seed=0)
    if len(val) == 0:
        val = samples
    backend.load(bundle)
    backend.set_parameters(global_params)
    ev = backend.evaluate(shaped(val.x, bundle), val.y)
    metrics = {"val_loss": float(ev.loss)}
    metrics.update({f"val_{k}": float(v) for k, v in ev.metrics.items()})
    if ev.accuracy is not None:
        metrics["val_accuracy"] = float(ev.accuracy)
    return int(ev.samples), metrics

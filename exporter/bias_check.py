"""Warn about a Conv/Linear bias that feeds a BatchNorm directly (it cannot learn anything).

In training mode BatchNorm subtracts the per-channel batch mean, and a per-channel bias is
constant over the batch: it cancels, and its true gradient is zero. What backpropagation
computes is rounding noise (about 1e-9), and AdamW divides the step by sqrt(v) + eps, so that
noise becomes steps of about the learning rate with a sign that depends on the build's
summation order: the bias wanders, differently on every runtime, for no gain. The fix is
``bias=False`` on the layer; the warning names it.

Found on the data flow, not the module order: forward hooks record each biased layer's output
tensor during one eval-mode forward, and a BatchNorm whose input *is* one of those tensors is
fed by that layer directly (a ReLU or an addition in between makes the bias matter again).
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import torch
from torch import nn

from .preflight import forward_with_hooks

log = logging.getLogger(__name__)

_BIASED = (nn.modules.conv._ConvNd, nn.Linear)


def biases_before_batchnorm(
    model: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    trainable: Collection[str] | None = None,
) -> list[tuple[str, str]]:
    """``(layer path, BatchNorm path)`` for every biased Conv/Linear feeding a BatchNorm.

    ``trainable``: parameter names the optimizer updates (a frozen bias does not move).
    """
    outputs: dict[int, tuple[torch.Tensor, str]] = {}  # id(output) -> (output kept alive, path)
    found: list[tuple[str, str]] = []

    def record(path: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(output, torch.Tensor):
                outputs[id(output)] = (output, path)

        return hook

    def check(path: str):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            seen = outputs.get(id(inputs[0])) if inputs else None
            if seen is not None and seen[0] is inputs[0]:
                found.append((seen[1], path))

        return hook

    handles = []
    for path, module in model.named_modules():
        bias = getattr(module, "bias", None)
        name = f"{path}.bias" if path else "bias"
        if isinstance(module, _BIASED) and isinstance(bias, torch.Tensor):
            if trainable is None or name in trainable:
                handles.append(module.register_forward_hook(record(path)))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(check(path)))
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        for handle in handles:
            handle.remove()
        return []
    forward_with_hooks(model, example if isinstance(example, tuple) else (example,), handles)
    return found


def warn_biases_before_batchnorm(
    model: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    trainable: Collection[str] | None = None,
) -> list[tuple[str, str]]:
    """Log one warning per biased layer feeding a BatchNorm; returns what it found."""
    modules = dict(model.named_modules())
    found = biases_before_batchnorm(model, example, trainable)
    for layer, norm in found:
        log.warning(
            "'%s' (%s) has a bias that feeds '%s' (%s) directly: BatchNorm subtracts the batch "
            "mean, so the bias's gradient is rounding noise that AdamW turns into "
            "learning-rate-sized steps of build-dependent sign; set bias=False on '%s'",
            layer,
            type(modules[layer]).__name__,
            norm,
            type(modules[norm]).__name__,
            layer,
        )
    return found

"""Parity of the portable step with PyTorch: the same batches, N optimizer steps on each side.

The batches end with a short one, so the check also proves the batch axis is dynamic.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedge.protocol.ort_runtime import import_onnxruntime, single_thread_session_options
from fedge.protocol.portable_seed import step_seed

from ..artifacts import OptimizerSpec
from ..verify import ZERO_GRADIENT, torch_optimizer
from .layout import LOSS_NAME, LR_NAME, SEED_NAME, WD_NAME, StepLayout
from .seeded_dropout import seeded_dropout
from .step import LOSS_FUNCTIONS

TOLERANCE = 1e-4
BATCH_SIZES = (8, 8, 5)  # the last, short batch exercises the dynamic batch axis
PARITY_SEED = 77  # the round seed the check's dropout masks are derived from
Inputs = torch.Tensor | tuple[torch.Tensor, ...]  # a batch: one tensor per model input


def step_parity(
    model: nn.Module,
    step: Path | Any,
    layout: StepLayout,
    initial: dict[str, np.ndarray],
    batches: Sequence[tuple[Inputs, torch.Tensor]],
    *,
    loss: str,
    optimizer: OptimizerSpec,
) -> dict[str, Any]:
    """Run ``batches`` through the ONNX step and through PyTorch, step by step; the differences.

    ``step``: the step's file, or an InferenceSession already built on it.

    With AdamW, a gradient element that is rounding noise in a step (at most ``ZERO_GRADIENT``
    x the step's largest; e.g. a convolution bias feeding BatchNorm, or the key part of an
    attention's ``in_proj_bias``: exactly zero in exact arithmetic) gets a full-size update of
    arbitrary sign on either side. Such elements are not compared: their parameters are listed
    in ``zero_gradient_parameters`` and they are set to PyTorch's values (with their Adam
    moments) after that step, so everything downstream is still compared.

    A model with dropout gets the same ``dropout_seed`` on both sides at every step: the
    masks are then equal and the comparison is as strict as without dropout.
    """
    onnx_step = _OnnxStep(step, layout, initial, optimizer.lr, optimizer.weight_decay)
    torch_step = _TorchStep(model, layout, loss, optimizer)
    compared = layout.names("parameter") + layout.names("frozen") + layout.names("buffer")
    noise: dict[str, np.ndarray] = {}
    loss_diff, loss_scale, diffs = 0.0, 1.0, dict.fromkeys(compared, 0.0)
    for i, (x, y) in enumerate(batches):
        seed = step_seed(PARITY_SEED, i) if layout.seeded else None
        onnx_loss = onnx_step(x, y, seed)
        torch_loss, grads = torch_step(x, y, seed)
        loss_diff = max(loss_diff, abs(onnx_loss - torch_loss))
        loss_scale = max(loss_scale, abs(torch_loss))
        largest = max((float(g.max()) for g in grads.values() if g.size), default=0.0)
        torch_state = torch_step.state()
        if optimizer.type == "adamw":
            for name, grad in grads.items():
                mask = grad <= ZERO_GRADIENT * largest
                if mask.any():
                    noise[name] = noise.get(name, np.zeros_like(mask)) | mask
                    onnx_step.sync(name, mask, torch_state, torch_step.moments(name))
        for name in compared:
            keep = ~noise[name] if name in noise else ...  # ... also indexes 0-d buffers
            diff = _max_abs_diff(torch_state[name][keep], onnx_step.state[name][keep])
            diffs[name] = max(diffs[name], diff)
    worst = max(diffs, key=lambda n: diffs[n]) if diffs else None
    numbers: dict[str, Any] = {
        "steps": len(batches),
        "batch_sizes": [int(len(y)) for _, y in batches],
        "step_max_abs_diff": diffs[worst] if worst else 0.0,
        "step_worst_slot": worst,
        "loss_max_abs_diff": loss_diff,
        # float32 keeps ~7 digits: a regression loss of 6,000 differs by ~1e-3 from rounding
        # alone, so the loss is compared relative to its size (>= 1)
        "loss_tolerance": TOLERANCE * loss_scale,
        "tolerance": TOLERANCE,
    }
    if noise:
        numbers["zero_gradient_parameters"] = sorted(noise)
    return numbers


class _OnnxStep:
    """The exported step in a plain InferenceSession, carrying its state between calls."""

    def __init__(
        self,
        step: Path | Any,
        layout: StepLayout,
        initial: dict[str, np.ndarray],
        lr: float,
        weight_decay: float = 0.0,
    ) -> None:
        if isinstance(step, str | Path):
            ort = import_onnxruntime(block_torch=False)
            step = ort.InferenceSession(
                str(step), single_thread_session_options(ort), providers=["CPUExecutionProvider"]
            )
        self._session = step
        self._layout = layout
        self._lr = np.array(lr, dtype=np.float32)
        self._wd = np.array(weight_decay, dtype=np.float32)
        self.state = {s.name: initial[s.name] for s in layout.slots}

    def __call__(self, x: Inputs, y: torch.Tensor, seed: int | None = None) -> float:
        layout = self._layout
        feeds = dict(self.state)
        feeds.update({n: t.numpy() for n, t in zip(layout.model_inputs, _tuple(x), strict=True)})
        feeds.update({layout.label_name: y.numpy(), LR_NAME: self._lr})
        if layout.decayed:
            feeds[WD_NAME] = self._wd
        if seed is not None:
            feeds[SEED_NAME] = np.array(seed, dtype=np.int64)
        outputs = layout.output_names
        result = dict(zip(outputs, self._session.run(outputs, feeds), strict=True))
        for slot in layout.slots:
            if slot.output:
                self.state[slot.name] = result[slot.output]
        return float(result[LOSS_NAME])

    def sync(
        self,
        name: str,
        mask: np.ndarray,
        values: dict[str, np.ndarray],
        moments: dict[str, np.ndarray],
    ) -> None:
        """Take the ``mask`` elements of parameter ``name`` (and its moments) from PyTorch."""
        for slot, value in [(name, values[name]), *moments.items()]:
            if slot in self.state:
                updated = np.array(self.state[slot], copy=True)
                updated[mask] = value[mask]
                self.state[slot] = updated


class _TorchStep:
    """The same model in PyTorch with ``torch.optim``: the reference."""

    def __init__(
        self, model: nn.Module, layout: StepLayout, loss: str, optimizer: OptimizerSpec
    ) -> None:
        self._model = copy.deepcopy(model).train()
        self._params = dict(self._model.named_parameters())
        trainable = layout.names("parameter")
        for name, p in self._params.items():
            p.requires_grad_(name in trainable)
        self._trainable = trainable
        self._opt = torch_optimizer([self._params[n] for n in trainable], optimizer)
        self._loss = LOSS_FUNCTIONS[loss]

    def __call__(
        self, x: Inputs, y: torch.Tensor, seed: int | None = None
    ) -> tuple[float, dict[str, np.ndarray]]:
        """One step; the loss and every trainable parameter's absolute gradient."""
        masks = None if seed is None else torch.tensor(seed, dtype=torch.int64)
        with seeded_dropout(masks):
            value = self._loss(self._model(*_tuple(x)), y)
        self._opt.zero_grad()
        value.backward()
        grads = {}
        for name in self._trainable:
            grad = self._params[name].grad
            param = self._params[name].detach()
            grads[name] = (grad if grad is not None else torch.zeros_like(param)).abs().numpy()
        self._opt.step()
        return float(value.detach()), grads

    def state(self) -> dict[str, np.ndarray]:
        return {
            n: t.detach().numpy().copy() for n, t in self._model.state_dict(keep_vars=True).items()
        }

    def moments(self, name: str) -> dict[str, np.ndarray]:
        state = self._opt.state.get(self._params[name], {})
        return {
            f"adamw/{key}/{name}": state[key].detach().numpy().copy()
            for key in ("exp_avg", "exp_avg_sq")
            if key in state
        }


def _tuple(x: Inputs) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0

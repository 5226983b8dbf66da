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

from ..artifacts import OptimizerSpec
from ..verify import torch_optimizer
from .layout import LOSS_NAME, LR_NAME, StepLayout
from .step import LOSS_FUNCTIONS

TOLERANCE = 1e-4
BATCH_SIZES = (8, 8, 5)  # the last, short batch exercises the dynamic batch axis


def step_parity(
    model: nn.Module,
    step_path: Path,
    layout: StepLayout,
    initial: dict[str, np.ndarray],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    loss: str,
    optimizer: OptimizerSpec,
) -> dict[str, Any]:
    """Run ``batches`` through the ONNX step and through PyTorch; return the differences."""
    onnx_state, onnx_losses = _onnx_steps(step_path, layout, initial, batches, optimizer.lr)
    torch_state, torch_losses = _torch_steps(model, layout, batches, loss, optimizer)
    compared = layout.names("parameter") + layout.names("frozen") + layout.names("buffer")
    diff = max(_max_abs_diff(torch_state[n], onnx_state[n]) for n in compared)
    return {
        "steps": len(batches),
        "batch_sizes": [int(len(y)) for _, y in batches],
        "step_max_abs_diff": diff,
        "loss_max_abs_diff": max(
            abs(a - b) for a, b in zip(torch_losses, onnx_losses, strict=True)
        ),
        "tolerance": TOLERANCE,
    }


def _onnx_steps(
    path: Path,
    layout: StepLayout,
    initial: dict[str, np.ndarray],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    lr: float,
) -> tuple[dict[str, np.ndarray], list[float]]:
    ort = import_onnxruntime(block_torch=False)
    session = ort.InferenceSession(
        str(path), single_thread_session_options(ort), providers=["CPUExecutionProvider"]
    )
    state = {s.name: initial[s.name] for s in layout.slots}
    outputs = layout.output_names
    losses = []
    for x, y in batches:
        feeds = dict(state)
        feeds.update({layout.input_name: x.numpy(), layout.label_name: y.numpy()})
        feeds[LR_NAME] = np.array(lr, dtype=np.float32)
        result = dict(zip(outputs, session.run(outputs, feeds), strict=True))
        losses.append(float(result[LOSS_NAME]))
        for slot in layout.slots:
            if slot.output:
                state[slot.name] = result[slot.output]
    return state, losses


def _torch_steps(
    model: nn.Module,
    layout: StepLayout,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss: str,
    optimizer: OptimizerSpec,
) -> tuple[dict[str, np.ndarray], list[float]]:
    clone = copy.deepcopy(model).train()
    params = dict(clone.named_parameters())
    trainable = layout.names("parameter")
    for name, p in params.items():
        p.requires_grad_(name in trainable)
    opt = torch_optimizer([params[n] for n in trainable], optimizer)
    losses = []
    for x, y in batches:
        value = LOSS_FUNCTIONS[loss](clone(x), y)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(float(value.detach()))
    state = {n: t.detach().numpy().copy() for n, t in clone.state_dict(keep_vars=True).items()}
    return state, losses


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0

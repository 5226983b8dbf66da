"""Export-time numerical checks: the bundle must compute what the PyTorch model computes.

- forward parity: ``inference.onnx`` (plain ONNX Runtime) vs the model in eval mode;
- checkpoint: the ORT checkpoint holds exactly the bundle's parameters and initial values;
- step parity: one optimizer step with the ORT training API vs the same step in PyTorch,
  compared over every parameter (frozen ones must not move on either side).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedge.protocol.ort_runtime import import_onnxruntime, single_thread_session_options

from .artifacts import OptimizerSpec
from .errors import ExportError

log = logging.getLogger(__name__)

FORWARD_TOLERANCE = 1e-4
STEP_TOLERANCE = 1e-4

_TORCH_LOSSES = {
    "cross_entropy": nn.CrossEntropyLoss,
    "mse": nn.MSELoss,
    "bce_with_logits": nn.BCEWithLogitsLoss,
    "l1": nn.L1Loss,
}


def forward_parity(model: nn.Module, inference_path: Path, example: torch.Tensor) -> float:
    """Max abs difference between ``inference.onnx`` and the model (eval mode) on ``example``."""
    ort = import_onnxruntime(block_torch=False)
    session = ort.InferenceSession(
        str(inference_path), single_thread_session_options(ort), providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name
    (ort_out,) = session.run(None, {input_name: example.numpy()})
    clone = copy.deepcopy(model).eval()
    with torch.no_grad():
        torch_out = clone(example).numpy()
    return _max_abs_diff(torch_out, ort_out)


def check_checkpoint(bundle_dir: Path, expected: dict[str, np.ndarray], trainable: Sequence[str]):
    """Raise ExportError unless the ORT checkpoint holds exactly ``expected`` (names, values)."""
    api = _training_api()
    state = api.CheckpointState.load_checkpoint(str(bundle_dir / "checkpoint"))
    stored = {name: np.array(p.data) for name, p in state.parameters}
    if set(stored) != set(expected):
        raise ExportError(
            f"checkpoint parameters {sorted(stored)} differ from the model's {sorted(expected)}"
        )
    for name, value in expected.items():
        if stored[name].shape != value.shape or not np.array_equal(stored[name], value):
            raise ExportError(f"checkpoint value of '{name}' differs from the model's")
        if state.parameters[name].requires_grad != (name in trainable):
            raise ExportError(f"checkpoint marks '{name}' with the wrong requires_grad")


def step_parity(
    model: nn.Module,
    bundle_dir: Path,
    *,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    loss: str,
    optimizer: OptimizerSpec,
    trainable: Sequence[str],
) -> dict[str, float]:
    """One training step in ORT and in PyTorch from the same weights; return the differences.

    Returns ``step_max_abs_diff`` (over all parameters after the step), ``loss_abs_diff`` and
    ``frozen_max_change`` (largest change of a frozen parameter in ORT; must be 0).
    """
    ort_before, ort_after, ort_loss = _ort_step(bundle_dir, inputs, labels, optimizer)
    torch_after, torch_loss = _torch_step(model, inputs, labels, loss, optimizer, trainable)
    if set(ort_after) != set(torch_after):
        raise ExportError(f"ORT parameters {sorted(ort_after)} != torch's {sorted(torch_after)}")
    step_diff = max(_max_abs_diff(torch_after[n], ort_after[n]) for n in torch_after)
    frozen = [n for n in ort_after if n not in trainable]
    frozen_change = max((_max_abs_diff(ort_before[n], ort_after[n]) for n in frozen), default=0.0)
    return {
        "step_max_abs_diff": step_diff,
        "loss_abs_diff": abs(float(torch_loss) - float(ort_loss)),
        "frozen_max_change": frozen_change,
    }


def sample_labels(
    loss: str,
    label_shape: Sequence[int],
    *,
    batch: int,
    num_classes: int | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Reproducible labels for the step check: class ids, 0/1 targets or normal targets."""
    shape = (batch, *label_shape)
    if loss == "cross_entropy":
        return torch.randint(0, num_classes or 2, shape, generator=generator, dtype=torch.int64)
    if loss == "bce_with_logits":
        return torch.randint(0, 2, shape, generator=generator).to(torch.float32)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def check_tolerances(numbers: dict[str, Any]) -> None:
    """Raise ExportError (with all the numbers) when a parity check is out of tolerance."""
    problems = []
    if numbers.get("forward_max_abs_diff", 0.0) > FORWARD_TOLERANCE:
        problems.append(
            f"forward max abs diff {numbers['forward_max_abs_diff']:.3g} > {FORWARD_TOLERANCE:g}"
        )
    step = numbers.get("step_max_abs_diff")
    if step is not None and step > STEP_TOLERANCE:
        problems.append(f"training step max abs diff {step:.3g} > {STEP_TOLERANCE:g}")
    if numbers.get("frozen_max_change", 0.0) != 0.0:
        problems.append(f"frozen parameters moved by {numbers['frozen_max_change']:.3g}")
    if problems:
        raise ExportError(
            "the exported bundle does not match the PyTorch model: "
            + "; ".join(problems)
            + f" (all numbers: {numbers}); use --no-verify to export anyway"
        )


def _training_api() -> Any:
    import_onnxruntime(block_torch=False)
    from onnxruntime.training import api

    return api


def _ort_step(
    bundle_dir: Path, inputs: torch.Tensor, labels: torch.Tensor, optimizer: OptimizerSpec
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    api = _training_api()
    ort = import_onnxruntime(block_torch=False)
    state = api.CheckpointState.load_checkpoint(str(bundle_dir / "checkpoint"))
    module = api.Module(
        str(bundle_dir / "training_model.onnx"),
        state,
        str(bundle_dir / "eval_model.onnx"),
        device="cpu",
        session_options=single_thread_session_options(ort),
    )
    opt = api.Optimizer(str(bundle_dir / "optimizer_model.onnx"), module)
    opt.set_learning_rate(optimizer.lr)
    before = {n: np.array(p.data, copy=True) for n, p in state.parameters}
    module.train()
    loss = module(inputs.numpy(), labels.numpy())
    opt.step()
    module.lazy_reset_grad()
    after = {n: np.array(p.data, copy=True) for n, p in state.parameters}
    return before, after, float(np.asarray(loss))


def _torch_step(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    loss: str,
    optimizer: OptimizerSpec,
    trainable: Sequence[str],
) -> tuple[dict[str, np.ndarray], float]:
    clone = copy.deepcopy(model).train()
    params = dict(clone.named_parameters())
    for name, param in params.items():
        param.requires_grad_(name in trainable)
    chosen = [params[n] for n in trainable]
    if optimizer.type == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(chosen, lr=optimizer.lr)
    else:
        opt = torch.optim.AdamW(
            chosen,
            lr=optimizer.lr,
            betas=tuple(optimizer.betas),
            eps=optimizer.eps,
            weight_decay=optimizer.weight_decay,
        )
    value = _TORCH_LOSSES[loss]()(clone(inputs), labels)
    opt.zero_grad()
    value.backward()
    opt.step()
    return {n: p.detach().numpy().copy() for n, p in params.items()}, float(value.detach())


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ExportError(f"shape mismatch in parity check: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0

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
# A gradient this small relative to the largest one is rounding noise (e.g. a bias feeding BatchNorm: exactly zero in exact
# arithmetic). Adam divides by its root mean square, so the noise becomes a full-size step whose
# sign differs between implementations; such parameters are reported, not compared.
ZERO_GRADIENT = 1e-5

_TORCH_LOSSES = {
    "cross_entropy": nn.CrossEntropyLoss,
    "mse": nn.MSELoss,
    "bce_with_logits": nn.BCEWithLogitsLoss,
    "l1": nn.L1Loss,
}


def forward_parity(
    model: nn.Module, inference_path: Path, example: tuple[torch.Tensor, ...]
) -> float:
    """Max abs difference between ``inference.onnx`` and the model (eval mode) on ``example``
    (one tensor per input, in the graph's input order)."""
    ort = import_onnxruntime(block_torch=False)
    session = ort.InferenceSession(
        str(inference_path), single_thread_session_options(ort), providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()][: len(example)]
    feeds = {n: t.numpy() for n, t in zip(names, example, strict=True)}
    (ort_out,) = session.run(None, feeds)
    clone = copy.deepcopy(model).eval()
    with torch.no_grad():
        torch_out = clone(*example).numpy()
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
    inputs: tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    loss: str,
    optimizer: OptimizerSpec,
    trainable: Sequence[str],
    running_stats: Sequence[dict[str, str]] = (),
    torch_loss: Any = None,
    optimizer_file: str = "optimizer_model.onnx",
) -> dict[str, float]:
    """One training step in ORT and in PyTorch from the same weights; return the differences.

    Returns ``step_max_abs_diff`` (over all parameters and running statistics after the step),
    ``loss_abs_diff``, ``frozen_max_change`` (largest change of a frozen parameter in ORT; must
    be 0) and, with BatchNorm, ``running_stats_max_abs_diff`` (statistics written back as a
    backend does, see ``write_back_running_stats``).
    """
    ort_before, ort_after, ort_loss = _ort_step(
        bundle_dir, inputs, labels, optimizer, running_stats, optimizer_file
    )
    stats = {s["param"] for s in running_stats}
    torch_after, torch_loss, grads = _torch_step(
        model, inputs, labels, torch_loss or _TORCH_LOSSES[loss](), optimizer, trainable, stats
    )
    if set(ort_after) != set(torch_after):
        raise ExportError(f"ORT parameters {sorted(ort_after)} != torch's {sorted(torch_after)}")
    largest = max((float(g.max()) for g in grads.values() if g.size), default=0.0)
    # With AdamW, an element whose gradient is rounding noise gets a full-size step of either
    # sign: those elements (not whole parameters: one noisy element of a depthwise kernel next
    # to BatchNorm used to fail the export) are left out of the comparison and reported.
    masks = {n: g <= ZERO_GRADIENT * largest for n, g in grads.items() if optimizer.type == "adamw"}
    noise = sorted(n for n, m in masks.items() if m.any())
    diffs = {
        n: _max_abs_diff(torch_after[n][~masks[n]], ort_after[n][~masks[n]])
        if n in noise
        else _max_abs_diff(torch_after[n], ort_after[n])
        for n in torch_after
    }
    compared = [n for n in diffs if n not in noise or not masks[n].all()]
    step_diff = max((diffs[n] for n in compared), default=0.0)
    worst = max(compared, key=lambda n: diffs[n]) if compared else None
    frozen = [n for n in ort_after if n not in trainable and n not in stats]
    frozen_change = max((_max_abs_diff(ort_before[n], ort_after[n]) for n in frozen), default=0.0)
    numbers = {
        "step_max_abs_diff": step_diff,
        "loss_abs_diff": abs(float(torch_loss) - float(ort_loss)),
        "frozen_max_change": frozen_change,
        "step_worst_parameter": worst,
    }
    if noise:
        numbers["zero_gradient_parameters"] = noise
    if stats:
        numbers["running_stats_max_abs_diff"] = max(
            _max_abs_diff(torch_after[n], ort_after[n]) for n in stats
        )
        numbers["running_stats_max_change"] = max(
            _max_abs_diff(ort_before[n], ort_after[n]) for n in stats
        )
    return numbers


def write_back_running_stats(
    state: Any, outputs: Any, running_stats: Sequence[dict[str, str]]
) -> float:
    """Copy a training step's running-statistics outputs into the checkpoint state.

    ``outputs`` is what ``Module.__call__`` returned: the loss first, then one array per
    ``running_stats`` entry in manifest order. Returns the loss. This is the contract every
    ort-training backend follows after each optimizer step.
    """
    if not running_stats:
        return _scalar(outputs)
    values = list(outputs)
    if len(values) != 1 + len(running_stats):
        raise ExportError(
            f"training graph returned {len(values)} outputs, expected loss + {len(running_stats)}"
        )
    for spec, value in zip(running_stats, values[1:], strict=True):
        state.parameters[spec["param"]] = np.ascontiguousarray(value)
    return _scalar(values[0])


def _scalar(value: Any) -> float:
    array = np.asarray(value)
    if array.size != 1:
        raise ExportError(f"the loss must be a scalar; the training graph returned {array.shape}")
    return float(array.reshape(-1)[0])


def sample_labels(
    loss: Any,
    label_shape: Sequence[int],
    *,
    batch: int,
    num_classes: int | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Reproducible labels for the step check: class ids, 0/1 targets or normal targets."""
    shape = (batch, *label_shape)
    if not isinstance(loss, str):
        return torch.randn(shape, generator=generator, dtype=torch.float32)
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
        problems.append(
            f"training step max abs diff {step:.3g} > {STEP_TOLERANCE:g} "
            f"(worst: '{numbers.get('step_worst_parameter')}')"
        )
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
    bundle_dir: Path,
    inputs: tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    optimizer: OptimizerSpec,
    running_stats: Sequence[dict[str, str]],
    optimizer_file: str,
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
    opt = api.Optimizer(str(bundle_dir / optimizer_file), module)
    opt.set_learning_rate(optimizer.lr)
    before = {n: np.array(p.data, copy=True) for n, p in state.parameters}
    module.train()
    outputs = module(*(t.numpy() for t in inputs), labels.numpy())
    opt.step()
    module.lazy_reset_grad()
    loss = write_back_running_stats(state, outputs, running_stats)
    after = {n: np.array(p.data, copy=True) for n, p in state.parameters}
    return before, after, loss


def _torch_step(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    labels: torch.Tensor,
    loss_fn: Any,
    optimizer: OptimizerSpec,
    trainable: Sequence[str],
    stats: set[str],
) -> tuple[dict[str, np.ndarray], float, dict[str, float]]:
    clone = copy.deepcopy(model).train()
    params = dict(clone.named_parameters())
    for name, param in params.items():
        param.requires_grad_(name in trainable)
    opt = torch_optimizer([params[n] for n in trainable], optimizer)
    value = loss_fn(clone(*inputs), labels)
    opt.zero_grad()
    value.backward()
    grads = {  # per element: AdamW's noise rule applies element by element
        n: params[n].grad.abs().numpy().copy()
        if params[n].grad is not None
        else np.zeros(tuple(params[n].shape), dtype=np.float32)
        for n in trainable
    }
    opt.step()
    after = {n: p.detach().numpy().copy() for n, p in params.items()}
    buffers = dict(clone.named_buffers())
    after.update({n: buffers[n].numpy().copy() for n in stats})
    return after, float(value.detach()), grads


def torch_optimizer(params: list[torch.nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """The PyTorch optimizer a bundle's optimizer must match (the parity reference)."""
    if spec.type == "sgd":
        return torch.optim.SGD(params, lr=spec.lr)
    return torch.optim.AdamW(
        params, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps, weight_decay=spec.weight_decay
    )


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ExportError(f"shape mismatch in parity check: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0

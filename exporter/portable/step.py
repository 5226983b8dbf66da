"""One training step as a pure function of tensors: forward, backward, optimizer update.

Written with ``torch.func.functional_call`` and ``torch.autograd.grad`` (``torch.func.grad``
fails on BatchNorm's in-place buffer updates) so ``make_fx`` can trace it into ATen ops. The
optimizers follow PyTorch's definitions exactly (``torch.optim.SGD`` without momentum,
``torch.optim.AdamW`` with bias correction), so the exported step matches PyTorch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..artifacts import OptimizerSpec
from .attention import plain_attention
from .failure import Location, ModuleTracker
from .layout import SEED_NAME, WD_NAME, StepLayout
from .seeded_dropout import seeded_dropout

LOSS_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
    "l1": F.l1_loss,
}


def one_hot_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy`` (mean, no ignore_index, no weights) without gather and scatter.

    Traced, ``F.cross_entropy`` becomes ``nll_loss`` with its ignore_index bookkeeping (Equal,
    Not, Where, GatherElements, and a ScatterElements in the backward); the agent checks labels
    against the task's range before training, so none of it can apply. A one-hot product has
    the same value, and its gradient is written out (``_OneHotCrossEntropy.backward``).
    """
    classes = torch.arange(logits.shape[1], device=logits.device)
    classes = classes.reshape((1, -1) + (1,) * (logits.dim() - 2))
    one_hot = (labels.unsqueeze(1) == classes).to(logits.dtype)
    return _OneHotCrossEntropy.apply(logits, one_hot)


class _OneHotCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy against one-hot targets, with the textbook gradient.

    Autograd's chain (mean's Expand and Div, the product's ReduceSum, log_softmax's backward)
    traces into about a dozen small nodes, each with ONNX Runtime's per-node cost; the
    gradient is ``(softmax - one_hot) / n`` (the one-hot rows sum to 1): three nodes.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, logits, one_hot):
        log_p = torch.log_softmax(logits, dim=1)
        ctx.save_for_backward(log_p, one_hot)
        return -(one_hot * log_p).sum(dim=1).mean()

    @staticmethod
    def backward(ctx, grad):
        log_p, one_hot = ctx.saved_tensors
        rows = log_p.numel() // log_p.shape[1]  # every position but the class axis
        return (torch.exp(log_p) - one_hot) * (grad / rows), None


# What the traced step computes; the parity check's PyTorch reference keeps LOSS_FUNCTIONS.
STEP_LOSSES = {**LOSS_FUNCTIONS, "cross_entropy": one_hot_cross_entropy}


class TrainingStep:
    """``step(*inputs) -> (loss, *new slots)`` in a layout's order, for ``make_fx`` to trace.

    ``failed_in`` names the submodule whose forward an exception escaped from (if any).
    """

    def __init__(
        self, model: nn.Module, layout: StepLayout, *, loss: str, optimizer: OptimizerSpec
    ) -> None:
        self._module = copy.deepcopy(model).train()
        self._tracker = ModuleTracker(self._module)
        self._loss_fn = STEP_LOSSES[loss]
        self._layout = layout
        self._optimizer = optimizer

    @property
    def failed_in(self) -> Location | None:
        return self._tracker.innermost

    def caller_of(self, operator: str | None) -> Location | None:
        """The submodule whose forward called ``operator`` (``aten.x.default``) while traced."""
        return self._tracker.caller_of(operator)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        layout = self._layout
        values = dict(zip(layout.input_names, inputs, strict=True))
        value, grads, new_buffers, plain = self._gradients(values)
        updated, extra = _update(self._optimizer, plain, grads, values, layout)
        buffers = [new_buffers[n] for n in layout.names("buffer")]
        return (value.detach(), *updated, *buffers, *extra)

    def _gradients(
        self, values: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], dict[str, torch.Tensor], list[torch.Tensor]]:
        """Loss, gradients of the trainable parameters, updated buffers, detached parameters."""
        layout = self._layout
        trainable = layout.names("parameter")
        buffers = layout.names("buffer")
        params = [values[n].detach().requires_grad_(True) for n in trainable]
        state = dict(zip(trainable, params, strict=True))
        state.update({n: values[n] for n in layout.names("frozen")})
        # Clones: BatchNorm updates its running statistics in place; those become outputs.
        new_buffers = {n: values[n].clone() for n in buffers}
        self._tracker.reset()
        seed = values[SEED_NAME] if layout.seeded else None
        with torch.enable_grad():
            with self._tracker, plain_attention(), seeded_dropout(seed):
                out = functional_call(
                    self._module,
                    {**state, **new_buffers},
                    tuple(values[n] for n in layout.model_inputs),
                )
            value = self._loss_fn(out, values[layout.label_name])
            grads = torch.autograd.grad(value, params)
        return value, grads, new_buffers, [p.detach() for p in params]


class CombinedStep(TrainingStep):
    """Every optimizer's update from one forward and backward: ``step(*inputs) -> (loss,
    *new buffers, then per optimizer its new parameters and optimizer state)``.

    ``layout`` is the union of the optimizers' layouts (``combined_layout``); the exporter
    traces and exports this once and cuts each optimizer's step out of it (``split.py``).
    """

    def __init__(
        self, model: nn.Module, layout: StepLayout, *, loss: str, optimizers: list[OptimizerSpec]
    ) -> None:
        super().__init__(model, layout, loss=loss, optimizer=optimizers[0])
        self._optimizers = optimizers

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        layout = self._layout
        values = dict(zip(layout.input_names, inputs, strict=True))
        value, grads, new_buffers, plain = self._gradients(values)
        out = [value.detach(), *[new_buffers[n] for n in layout.names("buffer")]]
        for optimizer in self._optimizers:
            updated, extra = _update(optimizer, plain, grads, values, layout)
            out += [*updated, *extra]
        return tuple(out)


def _update(
    optimizer: OptimizerSpec,
    plain: list[torch.Tensor],
    grads: tuple[torch.Tensor, ...],
    values: dict[str, torch.Tensor],
    layout: StepLayout,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One optimizer's new parameters and new optimizer state (in the layout's slot order)."""
    lr = values["lr"]
    with torch.no_grad():
        if optimizer.type == "sgd":
            return [p - lr * g for p, g in zip(plain, grads, strict=True)], []
        return _adamw(plain, list(grads), values, layout.names("parameter"), lr, optimizer)


def make_step(
    model: nn.Module, layout: StepLayout, *, loss: str, optimizer: OptimizerSpec
) -> TrainingStep:
    """A function ``step(*inputs) -> (loss, *new slots)`` in ``layout``'s order."""
    return TrainingStep(model, layout, loss=loss, optimizer=optimizer)


def _adamw(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    values: dict[str, torch.Tensor],
    names: list[str],
    lr: torch.Tensor,
    opt: OptimizerSpec,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``torch.optim.AdamW`` (amsgrad off, maximize off) for one step; returns params, state."""
    beta1, beta2 = (float(b) for b in opt.betas)
    step = values["adamw/step"] + 1.0
    bias1 = 1.0 - torch.pow(torch.full_like(step, beta1), step)
    bias2_sqrt = torch.sqrt(1.0 - torch.pow(torch.full_like(step, beta2), step))
    # Scalars once per step, not per tensor. torch's update p - lr/bias1 * m / (sqrt(v)/bias2_sqrt
    # + eps) is written p - (lr/bias1 * bias2_sqrt) * m / (sqrt(v) + eps * bias2_sqrt): the
    # same value (to rounding) with one elementwise node less per parameter tensor; the step
    # is mostly per-node cost in ONNX Runtime for small tensors.
    step_size = lr / bias1 * bias2_sqrt
    eps = opt.eps * bias2_sqrt
    decay = 1.0 - lr * values[WD_NAME]  # a graph input: the round may choose it
    new_params, avgs, avg_sqs = [], [], []
    for name, p, g in zip(names, params, grads, strict=True):
        m, v = values[f"adamw/exp_avg/{name}"], values[f"adamw/exp_avg_sq/{name}"]
        m = m + (1.0 - beta1) * (g - m)  # torch's lerp for weights < 0.5
        v = v * beta2 + (g * g) * (1.0 - beta2)
        new_params.append(p * decay - step_size * m / (torch.sqrt(v) + eps))
        avgs.append(m)
        avg_sqs.append(v)
    return new_params, [*avgs, *avg_sqs, step]

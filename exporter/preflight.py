"""Checks before any ONNX work: supported layers, parameter selection, and a trial forward pass.

Failing here is cheap and the messages name the module path or the parameter names involved.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .errors import ExportError

log = logging.getLogger(__name__)

_TORCH_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a manifest dtype name; unknown names raise ExportError."""
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise ExportError(
            f"unsupported dtype {name!r}; choose one of {sorted(_TORCH_DTYPES)}"
        ) from None


def check_supported_layers(model: nn.Module) -> None:
    """Refuse layers the ORT training backend cannot handle yet, naming the module path."""
    for path, module in model.named_modules():
        where = path or "<root>"
        if type(module) is nn.RNN:
            raise ExportError(
                f"module '{where}' (RNN): nn.RNN has no gradient builder in ONNX Runtime; "
                "use nn.GRU or nn.LSTM"
            )


def select_parameters(
    model: nn.Module,
    *,
    frozen: Sequence[str] = (),
    trainable: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Split ``model.named_parameters()`` into (trainable, frozen) names using glob patterns.

    Without ``trainable`` globs every parameter trains except those matching ``frozen``;
    with them only matching parameters train (and ``frozen`` still wins). Parameters whose
    ``requires_grad`` is already False stay frozen. Every glob must match at least one name.
    """
    names = [name for name, _ in model.named_parameters()]
    if not names:
        raise ExportError("the model has no parameters to train")
    for pattern in [*frozen, *(trainable or ())]:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ExportError(
                f"glob {pattern!r} matches no parameter; parameters are: {', '.join(names)}"
            )
    already_frozen = {n for n, p in model.named_parameters() if not p.requires_grad}

    def matches(name: str, patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    train_names: list[str] = []
    frozen_names: list[str] = []
    for name in names:
        wanted = trainable is None or matches(name, trainable)
        if wanted and not matches(name, frozen) and name not in already_frozen:
            train_names.append(name)
        else:
            frozen_names.append(name)
    if not train_names:
        raise ExportError(
            f"no parameter is left trainable (frozen: {list(frozen)}, trainable: {trainable}); "
            f"parameters are: {', '.join(names)}"
        )
    log.debug("trainable %s, frozen %s", train_names, frozen_names)
    return train_names, frozen_names


def sample_inputs(
    input_shape: Sequence[int], dtype: str, *, batch: int, generator: torch.Generator
) -> torch.Tensor:
    """A reproducible batch for trial runs and parity checks (normal floats, small integers)."""
    shape = (batch, *input_shape)
    kind = torch_dtype(dtype)
    if kind.is_floating_point:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(kind)
    return torch.randint(0, 2, shape, generator=generator, dtype=kind)


def forward_with_hooks(
    model: nn.Module, example: Sequence[torch.Tensor], handles: Sequence[Any]
) -> None:
    """One eval-mode, no-grad forward on ``example`` for the hooks whose ``handles`` are
    given (the exporter's data-flow checks: BatchNorm ranks, biases, Embedding ids); the hooks
    are removed and the model's mode restored whatever happens."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def trial_forward(model: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Run the model once in eval mode on ``example`` (one tensor per input); failing raises
    ExportError."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(*example)
    except Exception as exc:  # any failure inside user code is reported, not re-raised raw
        raise ExportError(f"the model does not run on {_describe(example)}: {exc}") from exc
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor):
        raise ExportError(f"the model must return one tensor; it returned {type(output).__name__}")
    if output.dim() < 1 or output.shape[0] != example[0].shape[0]:
        raise ExportError(
            f"the model's output shape {tuple(output.shape)} has no batch dimension first"
        )
    return output


def _describe(example: tuple[torch.Tensor, ...]) -> str:
    """``an input of shape (8, 64) (batch 8 + --input-shape (64,), dtype float32)``."""

    def dtype(t: torch.Tensor) -> str:
        return str(t.dtype).removeprefix("torch.")

    if len(example) == 1:
        (x,) = example
        return (
            f"an input of shape {tuple(x.shape)} (batch {x.shape[0]} + --input-shape "
            f"{tuple(x.shape[1:])}, dtype {dtype(x)})"
        )
    shown = ", ".join(f"{tuple(t.shape)} {dtype(t)}" for t in example)
    return f"{len(example)} inputs ({shown}; batch {example[0].shape[0]} first)"


def attention_dropout_hint(model: nn.Module) -> str:
    """What to do when ORT-training fails on dropout inside attention ("" if there is none).

    ONNX Runtime 1.19's gradient builder fails on the Dropout nodes the exporter writes inside
    ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` (an assertion about the node's
    outputs, naming no layer): name the layers and the fix instead."""
    found, layers = [], []
    for path, m in model.named_modules():
        if isinstance(m, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
            p = max((d.p for d in m.modules() if isinstance(d, nn.Dropout)), default=0.0)
            if p > 0:
                layers.append(path)
                found.append(f"'{path}' ({type(m).__name__}, dropout={p:g})")
        elif isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
            if not any(path.startswith(f"{layer}.") for layer in layers):
                found.append(f"'{path}' (MultiheadAttention, dropout={m.dropout:g})")
    if not found:
        return ""
    return (
        f". Likely cause: dropout inside attention in {', '.join(found)}: ONNX Runtime's "
        "training graph builder cannot differentiate it. Export with dropout=0.0 in those "
        "layers (e.g. nn.TransformerEncoderLayer(..., dropout=0.0)); other nn.Dropout layers "
        "are fine"
    )


def has_active_dropout(model: nn.Module) -> bool:
    """True when a dropout layer with p > 0 makes training steps random."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())

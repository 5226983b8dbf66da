"""PyTorch -> ONNX graphs for the bundle, and the small, recorded edits made to them.

Graphs come from the TorchScript exporter (``dynamo=False``): in training mode and without
constant folding it keeps every parameter as an initializer named exactly like
``named_parameters()``, which the ORT training artifacts and the manifest rely on.
Every model is written with deterministic protobuf serialization and cleared doc strings.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import onnx
import torch
from torch import nn

from .errors import ExportError

log = logging.getLogger(__name__)

MAX_IR_VERSION = 10  # ONNX Runtime 1.19 reads IR <= 10
BATCH_AXIS = "batch"


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    *,
    training: bool,
    opset: int,
    input_name: str,
    output_name: str,
) -> onnx.ModelProto:
    """Export a deep copy of ``model`` (train or eval mode) with a dynamic batch axis."""
    clone = copy.deepcopy(model)
    clone.train(training)
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(
                clone,
                (example,),
                buffer,
                dynamo=False,
                training=mode,
                do_constant_folding=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: BATCH_AXIS}, output_name: {0: BATCH_AXIS}},
            )
    except Exception as exc:  # torch raises many types; report its message as is
        raise ExportError(f"torch.onnx.export failed ({type(exc).__name__}): {exc}") from exc
    proto = onnx.load_from_string(buffer.getvalue())
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
    normalize(proto)
    return proto


def normalize(proto: onnx.ModelProto) -> None:
    """Clear doc strings (they may hold source locations) so equal models give equal bytes."""
    proto.doc_string = ""
    proto.graph.doc_string = ""
    for node in proto.graph.node:
        node.doc_string = ""
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        value.doc_string = ""


def require_initializers(proto: onnx.ModelProto, names: Iterable[str], what: str) -> None:
    """Raise ExportError unless every parameter name is an initializer of ``proto``."""
    present = {init.name for init in proto.graph.initializer}
    missing = [n for n in names if n not in present]
    if missing:
        raise ExportError(
            f"{what}: parameters {missing} are not ONNX initializers (the exporter renamed or "
            f"folded them); initializers are: {sorted(present)}"
        )


def opset_of(proto: onnx.ModelProto) -> int:
    """The default-domain opset version a model imports."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ExportError("the ONNX model imports no default-domain opset")


def patch_adamw_torch_mode(path: Path) -> int:
    """Set ``adam_mode`` to 0 (PyTorch's AdamW) on every AdamWOptimizer node; return the count.

    onnxblock builds AdamW with ``adam_mode=1`` (Hugging Face's variant: bias correction folded
    into the step size, weight decay after the update), which drifts ~2e-4 per step from
    ``torch.optim.AdamW``. Mode 0 matches PyTorch.
    """
    proto = onnx.load(str(path))
    patched = 0
    for node in proto.graph.node:
        if node.op_type != "AdamWOptimizer":
            continue
        for attr in node.attribute:
            if attr.name == "adam_mode" and attr.i != 0:
                attr.i = 0
                patched += 1
    if patched:
        save_model(proto, path)
    return patched


def save_model(proto: onnx.ModelProto, path: Path) -> None:
    """Write ``proto`` with deterministic serialization (stable map and field order)."""
    normalize(proto)
    path.write_bytes(proto.SerializeToString(deterministic=True))


def rewrite_deterministically(path: Path) -> None:
    """Re-save an ONNX file written by other code with our normalization."""
    save_model(onnx.load(str(path)), path)

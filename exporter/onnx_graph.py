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
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from .errors import ExportError

log = logging.getLogger(__name__)

MAX_IR_VERSION = 10  # ONNX Runtime 1.19 reads IR <= 10
BATCH_AXIS = "batch"


def export_onnx(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    *,
    training: bool,
    opset: int,
    input_names: Sequence[str],
    output_name: str,
) -> onnx.ModelProto:
    """Export a deep copy of ``model`` (train or eval mode) with a dynamic batch axis;
    ``example`` has one tensor per name in ``input_names`` (``forward``'s arguments, in order)."""
    clone = copy.deepcopy(model)
    clone.train(training)
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(
                clone,
                tuple(example),
                buffer,
                dynamo=False,
                training=mode,
                do_constant_folding=False,
                opset_version=opset,
                input_names=list(input_names),
                output_names=[output_name],
                dynamic_axes={
                    **{name: {0: BATCH_AXIS} for name in input_names},
                    output_name: {0: BATCH_AXIS},
                },
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


def restore_initializers(proto: onnx.ModelProto, values: dict[str, np.ndarray]) -> int:
    """Make every parameter a named initializer of an eval-mode export; return how many were fixed.

    In eval mode the TorchScript exporter treats weights and buffers as constants and
    deduplicates equal ones (a fresh BatchNorm weight, running_var: all ones), leaving
    ``Identity(other_name)`` where the parameter should be. Parameter overrides by name
    (InferenceRunner) need the real initializer, so those nodes are replaced by it.
    """
    present = {init.name for init in proto.graph.initializer}
    fixed = 0
    for name, value in values.items():
        if name in present:
            continue
        producers = [n for n in proto.graph.node if name in n.output]
        if len(producers) != 1 or producers[0].op_type not in ("Identity", "Constant"):
            continue  # require_initializers reports it with the full list
        proto.graph.node.remove(producers[0])
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        fixed += 1
    return fixed


def add_layernorm_outputs(proto: onnx.ModelProto) -> int:
    """Give each one-output LayerNormalization node its Mean and InvStdDev outputs; return count.

    ONNX Runtime's LayerNormalization gradient reads the saved mean and inverse standard
    deviation; the TorchScript exporter (opset >= 17) emits the node with one output, and the
    gradient builder then fails with ``i < node_->OutputDefs().size()``.
    """
    count = 0
    for index, node in enumerate(proto.graph.node):
        if node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx"):
            if len(node.output) == 1:
                base = node.name or f"layernorm_{index}"
                node.output.extend([f"{base}/saved_mean", f"{base}/saved_inv_std_dev"])
                count += 1
    return count


def average_pools_as_convs(proto: onnx.ModelProto) -> int:
    """Rewrite each AveragePool of a training graph as a fixed-weight depthwise Conv; return count.

    ONNX Runtime 1.19's CPU AveragePoolGrad kills the process with SIGFPE. With
    ``count_include_pad=1`` (PyTorch's default) or no padding, average pooling is exactly a
    depthwise convolution with constant weights ``1 / prod(kernel)``, whose gradient works.
    """
    nodes = [n for n in proto.graph.node if n.op_type == "AveragePool"]
    if not nodes:
        return 0
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {
        v.name: v.type.tensor_type.shape
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs["kernel_shape"])
        pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
        if attrs.get("ceil_mode", 0) or (any(pads) and not attrs.get("count_include_pad", 0)):
            raise ExportError(
                f"node {node.name!r}: average pooling with ceil_mode=True or padding without "
                "count_include_pad has no working gradient in ONNX Runtime; use "
                "ceil_mode=False and count_include_pad=True, or nn.AdaptiveAvgPool"
            )
        shape = shapes.get(node.input[0])
        if shape is None or len(shape.dim) < 2 or not shape.dim[1].HasField("dim_value"):
            raise ExportError(f"node {node.name!r}: the channel count of its input is unknown")
        channels = shape.dim[1].dim_value
        weight_name = f"{node.name or node.output[0]}/avg_weight"
        weight = np.full([channels, 1, *kernel], 1.0 / float(np.prod(kernel)), np.float32)
        proto.graph.initializer.append(numpy_helper.from_array(weight, weight_name))
        strides = list(attrs.get("strides", [1] * len(kernel)))
        node.op_type = "Conv"
        node.input.append(weight_name)
        del node.attribute[:]
        node.attribute.extend(
            [
                onnx.helper.make_attribute("group", channels),
                onnx.helper.make_attribute("kernel_shape", kernel),
                onnx.helper.make_attribute("pads", pads),
                onnx.helper.make_attribute("strides", strides),
            ]
        )
    return len(nodes)


def initializers_as_inputs(proto: onnx.ModelProto, names: Iterable[str]) -> None:
    """List the named initializers as graph inputs too (their values stay the defaults).

    ONNX Runtime treats an initializer that is not a graph input as a constant: its optimizer
    folds it (e.g. Conv+BatchNorm fusion) from the file's values *before* values supplied with
    ``SessionOptions.add_initializer`` apply, so overridden parameters were silently ignored.
    As graph inputs they are overridable and never folded.
    """
    inits = {init.name: init for init in proto.graph.initializer}
    listed = {i.name for i in proto.graph.input}
    for name in names:
        if name in inits and name not in listed:
            init = inits[name]
            proto.graph.input.append(
                onnx.helper.make_tensor_value_info(name, init.data_type, list(init.dims))
            )

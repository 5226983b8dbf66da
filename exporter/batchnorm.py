"""BatchNorm done right in the ORT training artifacts.

Out of the box ONNX Runtime training gets BatchNorm silently wrong: the running statistics are
baked in as constants, its BN kernel updates them in place with the *population* variance (PyTorch
uses the unbiased one) and returns them updated a second time, and the eval graph keeps BN in
training mode. The exporter therefore:

1. keeps ``running_mean``/``running_var`` as **frozen parameters** of the checkpoint, so they
   travel with the model (parameters.safetensors, deltas, FedAvg);
2. feeds the training graph's BN node private scratch copies of the statistics (its in-place
   update must not touch the parameters) and computes PyTorch's update with standard operators
   beside it: ``new = (1 - momentum) * old + momentum * batch_stat`` (unbiased variance);
3. exposes each new statistic as a training-graph output; the manifest's ``running_stats`` lists
   ``{"param", "output"}`` pairs in the order ``Module.__call__`` returns them after the loss, and
   a backend writes them back into the checkpoint state after every optimizer step;
4. turns every BN of ``eval_model.onnx`` and ``inference.onnx`` into inference mode (one output,
   reading the parameters), so evaluation uses the running statistics as PyTorch's eval does.

``num_batches_tracked`` only matters for ``momentum=None`` (a cumulative average), which is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from .errors import ExportError
from .onnx_graph import opset_of, save_model
from .preflight import forward_with_hooks

log = logging.getLogger(__name__)

UPDATED_SUFFIX = ".updated"
_SCRATCH_SUFFIX = ".bn_scratch"


@dataclass(frozen=True)
class BatchNormLayer:
    """One BatchNorm module as the exporter needs it."""

    path: str
    momentum: float
    input_rank: int

    @property
    def stats(self) -> tuple[str, str]:
        """The parameter names of its running mean and variance."""
        prefix = f"{self.path}." if self.path else ""
        return f"{prefix}running_mean", f"{prefix}running_var"


def batchnorm_modules(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every BatchNorm module with its path; unsupported configurations raise ExportError."""
    found = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        where = path or "<root>"
        if isinstance(module, nn.SyncBatchNorm) or type(module).__name__.startswith("Lazy"):
            raise ExportError(
                f"module '{where}' ({type(module).__name__}) is not supported; "
                "use nn.BatchNorm1d/2d/3d"
            )
        if not module.track_running_stats:
            raise ExportError(
                f"module '{where}' ({type(module).__name__}): track_running_stats=False uses batch "
                "statistics at inference too; use track_running_stats=True or nn.GroupNorm"
            )
        if module.momentum is None:
            raise ExportError(
                f"module '{where}' ({type(module).__name__}): momentum=None (cumulative average) "
                "is not supported; set a momentum such as 0.1"
            )
        found.append((path, module))
    return found


def find_layers(model: nn.Module, example: tuple[torch.Tensor, ...]) -> list[BatchNormLayer]:
    """Describe the model's BatchNorm layers (input rank taken from one eval forward pass)."""
    modules = batchnorm_modules(model)
    if not modules:
        return []
    ranks: dict[str, int] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda _m, args, path=path: ranks.__setitem__(path, args[0].dim())
        )
        for path, module in modules
    ]
    forward_with_hooks(model, example, hooks)
    layers = []
    for path, module in modules:
        if path not in ranks:
            continue  # defined but never called: nothing in the graph
        layers.append(BatchNormLayer(path, float(module.momentum), ranks[path]))
    return layers


def running_stat_names(layers: list[BatchNormLayer]) -> list[str]:
    """Parameter names of all running statistics, in layer order."""
    return [name for layer in layers for name in layer.stats]


def rewrite_training_graph(
    proto: onnx.ModelProto, layers: list[BatchNormLayer], values: dict[str, np.ndarray]
) -> list[dict[str, str]]:
    """Add PyTorch's running-statistics update beside each BN node; return the output mapping.

    ``values`` are the statistics before export: tracing in training mode runs the model once
    and the TorchScript exporter stores the statistics *after* that pass, so they are reset.
    """
    if not layers:
        return []
    by_stat = {layer.stats[0]: layer for layer in layers}
    inits = {i.name: i for i in proto.graph.initializer}
    for name in running_stat_names(layers):
        if name not in inits:
            raise ExportError(f"running statistic '{name}' is not an initializer of the graph")
        inits[name].CopyFrom(numpy_helper.from_array(np.asarray(values[name]), name))
    opset = opset_of(proto)
    mapping: list[dict[str, str]] = []
    new_nodes: list[onnx.NodeProto] = []
    for node in proto.graph.node:
        if node.op_type != "BatchNormalization" or len(node.input) < 5:
            continue
        layer = by_stat.get(node.input[3])
        if layer is None or len(node.output) < 3:
            raise ExportError(
                f"BatchNormalization node {node.name!r} reads {node.input[3]!r}, which is not a "
                "running mean of a BatchNorm module in training mode"
            )
        mean_name, var_name = layer.stats
        for k, stat in ((3, mean_name), (4, var_name)):
            scratch = numpy_helper.from_array(
                numpy_helper.to_array(inits[stat]), stat + _SCRATCH_SUFFIX
            )
            proto.graph.initializer.append(scratch)
            node.input[k] = scratch.name
        new_nodes.extend(_update_nodes(node.input[0], layer, opset))
        for stat in layer.stats:
            out = stat + UPDATED_SUFFIX
            proto.graph.value_info.append(
                helper.make_tensor_value_info(out, inits[stat].data_type, list(inits[stat].dims))
            )
            mapping.append({"param": stat, "output": out})
    if len(mapping) != 2 * len(layers):
        raise ExportError(
            f"found {len(mapping) // 2} BatchNormalization nodes for {len(layers)} BatchNorm modules"
        )
    proto.graph.node.extend(new_nodes)
    return mapping


def _update_nodes(x: str, layer: BatchNormLayer, opset: int) -> list[onnx.NodeProto]:
    """Nodes computing PyTorch's new running mean and (unbiased) variance from the BN input."""
    mean_name, var_name = layer.stats
    p = f"{layer.path}.bn_update/" if layer.path else "bn_update/"
    axes = [0, *range(2, layer.input_rank)]
    m = layer.momentum

    def const(name: str, value: float | list[int], dtype: int = TensorProto.FLOAT):
        dims = [len(value)] if isinstance(value, list) else []
        vals = value if isinstance(value, list) else [value]
        return helper.make_node(
            "Constant", [], [p + name], value=helper.make_tensor(p + name, dtype, dims, vals)
        )

    def reduce(op: str, inp: str, out: str, keepdims: int) -> onnx.NodeProto:
        if opset >= 18:
            return helper.make_node(op, [inp, p + "axes"], [out], keepdims=keepdims)
        return helper.make_node(op, [inp], [out], axes=axes, keepdims=keepdims)

    nodes = [
        const("axes", axes, TensorProto.INT64),
        const("momentum", m),
        const("keep", 1.0 - m),
        const("one", 1.0),
        reduce("ReduceMean", x, p + "mean", 0),
        reduce("ReduceMean", x, p + "mean_k", 1),
        helper.make_node("Sub", [x, p + "mean_k"], [p + "centered"]),
        reduce("ReduceSumSquare", p + "centered", p + "sumsq", 0),
        helper.make_node("Size", [x], [p + "size"]),
        helper.make_node("Size", [p + "mean"], [p + "channels"]),
        helper.make_node("Div", [p + "size", p + "channels"], [p + "count_i"]),
        helper.make_node("Cast", [p + "count_i"], [p + "count"], to=TensorProto.FLOAT),
        helper.make_node("Sub", [p + "count", p + "one"], [p + "dof"]),
        helper.make_node("Div", [p + "sumsq", p + "dof"], [p + "var"]),
    ]
    for stat, batch in ((mean_name, p + "mean"), (var_name, p + "var")):
        key = stat.rsplit(".", 1)[-1]
        nodes += [
            helper.make_node("Mul", [stat, p + "keep"], [p + key + "_old"]),
            helper.make_node("Mul", [batch, p + "momentum"], [p + key + "_new"]),
            helper.make_node("Add", [p + key + "_old", p + key + "_new"], [stat + UPDATED_SUFFIX]),
        ]
    for i, node in enumerate(nodes):
        node.name = f"{p}{i}"
    return nodes


def fix_eval_model(path: Path, running_stats: list[dict[str, str]]) -> int:
    """Put every BN of the saved eval model in inference mode on the real statistics.

    Drops the running-statistics outputs (and the nodes only they needed); returns the number
    of BN nodes changed.
    """
    if not running_stats:
        return 0
    proto = onnx.load(str(path))
    changed = _to_inference_mode(proto)
    extra = {s["output"] for s in running_stats}
    keep = [o for o in proto.graph.output if o.name not in extra]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    _prune(proto)
    save_model(proto, path)
    return changed


def _to_inference_mode(proto: onnx.ModelProto) -> int:
    changed = 0
    for node in proto.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        for k in (3, 4):
            if node.input[k].endswith(_SCRATCH_SUFFIX):
                node.input[k] = node.input[k].removesuffix(_SCRATCH_SUFFIX)
        del node.output[1:]
        for attr in node.attribute:
            if attr.name == "training_mode":
                attr.i = 0
        changed += 1
    return changed


def _prune(proto: onnx.ModelProto) -> None:
    """Remove nodes, initializers and value_info nothing needed by a graph output uses."""
    graph = proto.graph
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)

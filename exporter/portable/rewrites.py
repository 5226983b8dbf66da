"""Rewrites of the exported step graph that ONNX Runtime cannot do itself.

``max_pool2d_with_indices`` is translated (onnxscript) as the pooling MaxPool with an indices
output plus a second, 1x1 MaxPool over the whole input whose indices are sliced down to each
(sample, channel) plane's first flat index, to turn ONNX's flat indices into PyTorch's
per-plane ones. That second MaxPool reads and indexes every input element; in ORT's profile of
a small CNN step it is about a tenth of the step. The offsets it computes depend only on the
input's shape: ``(n * C + c) * H * W``. Here they come from the shape (Shape, ReduceProd,
Range, Reshape): a few scalar nodes with a dynamic batch, and a constant once ORT knows the
batch size (the agent's fixed-batch session), which its constant folding then removes.
"""

from __future__ import annotations

import onnx
from onnx import helper


def plane_offsets_from_shape(proto: onnx.ModelProto) -> int:
    """Replace every 1x1 MaxPool + Slice that computes plane offsets; returns how many."""
    graph = proto.graph
    nodes = list(graph.node)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {
        n.output[0]: list(helper.get_attribute_value(n.attribute[0]))
        for n in nodes
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value_ints"
    }
    outputs = {o.name for o in graph.output}
    replaced, drop, insert = 0, set(), {}
    for node in nodes:
        slices = _offset_slices(node, consumers, constants, outputs)
        if slices is None:
            continue
        rank = 2 + len(_ints(node, "kernel_shape"))
        for index, piece in enumerate(slices):
            insert[id(piece)] = _offsets(
                node.input[0], piece.output[0], rank, f"{node.name}_{index}"
            )
        drop.add(id(node))
        replaced += 1
    if not replaced:
        return 0
    rebuilt = []
    for node in nodes:
        if id(node) in insert:
            rebuilt.extend(insert[id(node)])
        elif id(node) not in drop:
            rebuilt.append(node)
    used = {name for node in rebuilt for name in node.input} | outputs
    # the Slices' starts/ends/axes constants are left without a reader: drop them too
    rebuilt = [n for n in rebuilt if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(rebuilt)
    return replaced


def _offset_slices(
    node: onnx.NodeProto,
    consumers: dict[str, list[onnx.NodeProto]],
    constants: dict[str, list[int]],
    outputs: set[str],
) -> list[onnx.NodeProto] | None:
    """The Slice nodes reading ``node``'s indices, if ``node`` is an offsets-only 1x1 MaxPool."""
    if node.op_type != "MaxPool" or node.domain not in ("", "ai.onnx") or len(node.output) < 2:
        return None
    kernel = _ints(node, "kernel_shape")
    spatial = len(kernel)
    if any(k != 1 for k in kernel) or any(s != 1 for s in _ints(node, "strides", [1] * spatial)):
        return None
    if any(_ints(node, "pads", [0] * 2 * spatial)) or _attr(node, "auto_pad", b"NOTSET") not in (
        b"NOTSET",
        "NOTSET",
    ):
        return None
    values, indices = node.output[0], node.output[1]
    if (values and (consumers.get(values) or values in outputs)) or indices in outputs:
        return None
    slices = consumers.get(indices, [])
    want = (list(range(2, 2 + spatial)), [0] * spatial, [1] * spatial)
    for piece in slices:
        if piece.op_type != "Slice" or len(piece.input) < 4 or piece.input[0] != indices:
            return None
        starts, ends, axes = (constants.get(name) for name in piece.input[1:4])
        steps = constants.get(piece.input[4]) if len(piece.input) > 4 else [1] * spatial
        if (axes, starts, ends) != want or steps != [1] * spatial:
            return None
    return slices or None


def _offsets(source: str, result: str, rank: int, tag: str) -> list[onnx.NodeProto]:
    """Nodes computing ``result[n, c, 0, ...] = (n * C + c) * prod(spatial)`` from ``source``."""
    t = f"{tag}_plane_offsets"
    ones = helper.make_tensor(
        f"{t}_ones_value", onnx.TensorProto.INT64, [rank - 2], [1] * (rank - 2)
    )
    zero = helper.make_tensor(f"{t}_zero_value", onnx.TensorProto.INT64, [], [0])
    return [
        helper.make_node("Shape", [source], [f"{t}_nc"], start=0, end=2),
        helper.make_node("Shape", [source], [f"{t}_spatial"], start=2),
        helper.make_node("ReduceProd", [f"{t}_nc"], [f"{t}_planes"], keepdims=0),
        helper.make_node("ReduceProd", [f"{t}_spatial"], [f"{t}_size"], keepdims=0),
        helper.make_node("Mul", [f"{t}_planes", f"{t}_size"], [f"{t}_total"]),
        helper.make_node("Constant", [], [f"{t}_zero"], value=zero),
        helper.make_node("Range", [f"{t}_zero", f"{t}_total", f"{t}_size"], [f"{t}_flat"]),
        helper.make_node("Constant", [], [f"{t}_ones"], value=ones),
        helper.make_node("Concat", [f"{t}_nc", f"{t}_ones"], [f"{t}_shape"], axis=0),
        helper.make_node("Reshape", [f"{t}_flat", f"{t}_shape"], [result]),
    ]


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _ints(node: onnx.NodeProto, name: str, default: list[int] | None = None) -> list[int]:
    value = _attr(node, name, default or [])
    assert isinstance(value, (list, tuple)), f"{node.op_type}.{name} is not a list of ints"
    return [int(v) for v in value]

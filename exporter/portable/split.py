"""Cut one optimizer's step out of the combined step graph.

A bundle carrying several optimizers traces and exports the training step once, with every
optimizer's update as outputs of the same graph (``step.CombinedStep``): the forward and
backward, and the ONNX export (the expensive part), are shared. Each optimizer's step file is
then the part of that graph its outputs need, with its outputs renamed to the layout's names
(``new/<slot>``). Nested graphs (If/Loop/Scan bodies) may read outer values: their inputs
count as reads too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import onnx
from onnx import helper


def extract_step(
    proto: onnx.ModelProto,
    inputs: Sequence[str],
    outputs: Mapping[str, str],
) -> onnx.ModelProto:
    """The graph computing ``outputs`` (combined name -> name in the result) from ``inputs``.

    Every name in ``inputs`` stays a graph input (a backend binds each of them), in that order;
    ValueError if the outputs need a graph input not listed.
    """
    graph = proto.graph
    graph_inputs = {vi.name: vi for vi in graph.input}
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):  # ONNX graphs are topologically sorted
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(_reads(node))
    kept.reverse()
    missing = sorted(n for n in needed & set(graph_inputs) if n not in inputs)
    if missing:
        raise ValueError(f"the step's outputs read inputs it does not list: {missing[:5]}")
    produced = {o for node in kept for o in node.output}
    clashes = sorted((produced | set(inputs)) & (set(outputs.values()) - set(outputs)))
    if clashes:
        raise ValueError(f"renamed outputs clash with values of the step: {clashes[:5]}")
    nodes = [_renamed(node, outputs) for node in kept]
    for old, new in outputs.items():
        if old not in produced:  # an output that is an input (or an initializer) unchanged
            nodes.append(helper.make_node("Identity", [old], [new], name=f"identity_{new}"))
    out_info = {vi.name: vi for vi in graph.output}
    result = helper.make_graph(
        nodes,
        graph.name,
        [graph_inputs[n] for n in inputs],
        [_value_info(out_info[old], new) for old, new in outputs.items()],
        initializer=[i for i in graph.initializer if i.name in needed],
    )
    model = helper.make_model(
        result, opset_imports=list(proto.opset_import), ir_version=proto.ir_version
    )
    model.functions.extend(proto.functions)
    model.producer_name, model.producer_version = proto.producer_name, proto.producer_version
    return model


def _reads(node: onnx.NodeProto) -> Iterable[str]:
    yield from (i for i in node.input if i)
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in sub.node:
                yield from _reads(inner)


def _renamed(node: onnx.NodeProto, names: Mapping[str, str]) -> onnx.NodeProto:
    if not any(o in names for o in node.output) and not any(i in names for i in node.input):
        return node
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for i, name in enumerate(copy.output):
        copy.output[i] = names.get(name, name)
    for i, name in enumerate(copy.input):
        copy.input[i] = names.get(name, name)
    return copy


def _value_info(info: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.name = name
    return copy

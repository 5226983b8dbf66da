"""The step-graph rewrite that computes MaxPool's plane offsets from the input's shape."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from fedge.exporter.portable.rewrites import plane_offsets_from_shape


def offsets_graph(spatial: int) -> onnx.ModelProto:
    """What onnxscript writes for max_pool*_with_indices: pooled indices minus plane offsets."""
    ints = lambda name, values: helper.make_node(  # noqa: E731
        "Constant", [], [name], value_ints=values
    )
    axes = list(range(2, 2 + spatial))
    nodes = [
        helper.make_node(
            "MaxPool", ["x"], ["y", "flat"], kernel_shape=[2] * spatial, strides=[2] * spatial
        ),
        helper.make_node(
            "MaxPool", ["x"], ["unused", "all"], kernel_shape=[1] * spatial, strides=[1] * spatial
        ),
        ints("starts", [0] * spatial),
        ints("ends", [1] * spatial),
        ints("axes", axes),
        helper.make_node("Slice", ["all", "starts", "ends", "axes"], ["offsets"]),
        helper.make_node("Sub", ["flat", "offsets"], ["indices"]),
    ]
    dims = ["batch", 3] + [6] * spatial
    pooled = ["batch", 3] + [3] * spatial
    graph = helper.make_graph(
        nodes,
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, pooled),
            helper.make_tensor_value_info("indices", TensorProto.INT64, pooled),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(proto: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("spatial", [1, 2])
def test_offsets_come_from_the_shape_and_the_indices_do_not_change(spatial):
    before = offsets_graph(spatial)
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert plane_offsets_from_shape(after) == 1
    onnx.checker.check_model(after)
    pools = [n for n in after.graph.node if n.op_type == "MaxPool"]
    assert [list(n.output) for n in pools] == [["y", "flat"]]  # the 1x1 pool is gone
    assert not {"starts", "ends", "axes"} & {o for n in after.graph.node for o in n.output}
    rng = np.random.default_rng(0)
    for batch in (1, 5):  # the batch axis stays dynamic
        x = rng.standard_normal((batch, 3, *[6] * spatial)).astype(np.float32)
        (y0, i0), (y1, i1) = run(before, x), run(after, x)
        assert np.array_equal(y0, y1) and np.array_equal(i0, i1)
        assert i1.max() < 6**spatial  # per-plane indices, as PyTorch's


def test_a_pool_whose_values_are_read_is_left_alone():
    proto = offsets_graph(2)
    shape = ["batch", 3, 6, 6]
    proto.graph.output.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, shape))
    assert plane_offsets_from_shape(proto) == 0
    assert sum(n.op_type == "MaxPool" for n in proto.graph.node) == 2

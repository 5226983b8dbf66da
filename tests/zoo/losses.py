"""A custom loss written with onnxblock: SmoothL1 (Huber, delta 1), the mean over all elements.

``fedge export`` accepts any ``onnxruntime.training.onnxblock.Block`` as the loss. ``build``
receives the model's output name, adds the label input and returns the scalar loss's name.
"""

from __future__ import annotations

import onnx
from onnxruntime.training import onnxblock
from onnxruntime.training.onnxblock import _graph_utils


class SmoothL1Loss(onnxblock.Block):
    """0.5 * d^2 where |d| < 1, |d| - 0.5 elsewhere (d = output - target): torch's SmoothL1Loss."""

    def build(self, output_name: str, target_name: str = "target") -> str:
        target = onnxblock.blocks.InputLike(output_name)(target_name)
        graph = self.base.graph

        def name(stem: str) -> str:
            return _graph_utils.generate_graph_name(stem)

        def scalar(value: float) -> str:
            init = name("smooth_l1_const")
            graph.initializer.append(
                onnx.helper.make_tensor(init, onnx.TensorProto.FLOAT, [], [value])
            )
            return init

        def node(op: str, inputs: list[str]) -> str:
            out = name(f"smooth_l1_{op.lower()}")
            graph.node.append(onnx.helper.make_node(op, inputs, [out], name=out))
            return out

        abs_diff = node("Abs", [node("Sub", [output_name, target])])
        half = scalar(0.5)
        squared = node("Mul", [node("Mul", [abs_diff, abs_diff]), half])
        linear = node("Sub", [abs_diff, half])
        small = node("Less", [abs_diff, scalar(1.0)])
        return onnxblock.blocks.ReduceMean(keepdims=False)(node("Where", [small, squared, linear]))

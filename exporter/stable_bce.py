"""Binary cross entropy with logits that stays finite for confident logits (ort-training).

onnxruntime-training's ``onnxblock.loss.BCEWithLogitsLoss`` computes
``-(t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x)))``: once a logit passes ~17,
``1 - sigmoid(x)`` is 0 in float32, the loss is ``0 * -inf`` = NaN, and every round after a
well-trained one diverges on the device. This block is PyTorch's formulation,
``max(x, 0) - x * t + log(1 + exp(-|x|))``, written with the blocks onnxblock has:
``max(x, 0) = (x + |x|) / 2`` and ``log(1 + exp(-|x|)) = -log(sigmoid(|x|))``, where
``sigmoid(|x|)`` lies in [0.5, 1] (its log never reaches -inf).
"""

from __future__ import annotations

import copy
from typing import Any


def stable_bce_with_logits() -> Any:
    """An onnxblock Block: mean stable BCE between the model output and input ``target``."""
    import onnx
    from onnxruntime.training.onnxblock import _graph_utils, blocks

    class StableBCEWithLogitsLoss(blocks.Block):
        def __init__(self) -> None:
            super().__init__()
            self._abs = blocks.Abs()
            self._add = blocks.Add()
            self._sub = blocks.Sub()
            self._mul = blocks.Mul()
            self._mul_t = blocks.Mul()
            self._sigmoid = blocks.Sigmoid()
            self._log = blocks.Log()
            self._reduce = blocks.ReduceMean(keepdims=False)

        def build(self, loss_input_name: str, target_name: str = "target") -> str:
            half = _graph_utils.generate_graph_name("stable_bce.half")
            self.base.graph.initializer.append(
                onnx.helper.make_tensor(half, onnx.TensorProto.FLOAT, [1], [0.5])
            )
            if not _graph_utils.node_arg_exists(self.base, target_name):
                target = copy.deepcopy(
                    _graph_utils.get_output_from_output_name(self.base, loss_input_name)
                )
                target.name = target_name
                self.base.graph.input.append(target)
            x = loss_input_name
            abs_x = self._abs(x)
            relu_x = self._mul(self._add(x, abs_x), half)  # max(x, 0)
            log_term = self._log(self._sigmoid(abs_x))  # -log(1 + exp(-|x|))
            loss = self._sub(self._sub(relu_x, self._mul_t(x, target_name)), log_term)
            return self._reduce(loss)

    return StableBCEWithLogitsLoss()

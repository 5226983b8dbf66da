"""Cutting one optimizer's step out of the combined step graph (exporter/portable/split.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fedge.exporter.portable.split import extract_step
from fedge.protocol.ort_runtime import import_onnxruntime


def _combined() -> onnx.ModelProto:
    """loss = sum(w * x); new/w = w - lr * x (sgd); adamw/new/w = w * 0.5; new/b = b (as is)."""
    vi = lambda n, shape: helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)  # noqa: E731
    nodes = [
        helper.make_node("Mul", ["w", "x"], ["wx"]),
        helper.make_node("ReduceSum", ["wx"], ["loss"], keepdims=0),
        helper.make_node("Mul", ["lr", "x"], ["step"]),
        helper.make_node("Sub", ["w", "step"], ["sgd/new/w"]),
        helper.make_node("Mul", ["w", "half"], ["new/w"]),
    ]
    graph = helper.make_graph(
        nodes,
        "step",
        [vi("w", [3]), vi("b", [3]), vi("m", [3]), vi("x", [3]), vi("lr", [])],
        [vi("loss", []), vi("new/w", [3]), vi("sgd/new/w", [3]), vi("b", [3])],
        initializer=[helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, feeds: dict) -> dict:
    ort = import_onnxruntime(block_torch=False)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def test_the_cut_keeps_what_its_outputs_need_renamed_and_every_listed_input() -> None:
    cut = extract_step(
        _combined(),
        ["w", "b", "x", "lr"],
        {"loss": "loss", "sgd/new/w": "new/w", "b": "new/b"},
    )
    onnx.checker.check_model(cut)
    assert [i.name for i in cut.graph.input] == ["w", "b", "x", "lr"]
    assert [o.name for o in cut.graph.output] == ["loss", "new/w", "new/b"]
    assert {n.op_type for n in cut.graph.node} == {"Mul", "ReduceSum", "Sub", "Identity"}
    assert not cut.graph.initializer  # AdamW's constant is not read
    w, x = np.array([1.0, 2.0, 3.0], np.float32), np.array([1.0, 1.0, 2.0], np.float32)
    out = _run(cut, {"w": w, "b": x, "x": x, "lr": np.array(0.1, np.float32)})
    np.testing.assert_allclose(out["new/w"], w - 0.1 * x)
    np.testing.assert_allclose(out["new/b"], x)
    assert out["loss"] == pytest.approx(9.0)


def test_a_cut_that_reads_an_unlisted_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"does not list: \['lr'\]"):
        extract_step(_combined(), ["w", "x"], {"sgd/new/w": "new/w"})


def test_a_rename_onto_a_value_the_cut_keeps_is_refused() -> None:
    with pytest.raises(ValueError, match="clash"):
        extract_step(_combined(), ["w", "x", "lr"], {"sgd/new/w": "wx", "loss": "loss"})

"""The epoch graph (the portable step in an ONNX Loop) computes exactly what the step computes.

A toy step graph built with onnx's helper (no export, so the test is fast): a changing state
slot, a frozen one, a batch, labels and a per-step seed. The epoch model is built from its
bytes by the agent's own protobuf writer (no onnx in the agent) and must pass onnx's checker
and give, bit for bit, the states and losses of as many runs of the step graph.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fedge.agent.backends import portable_epoch as epoch
from fedge.agent.backends.onnx_wire import WireError
from fedge.protocol.ort_runtime import import_onnxruntime, single_thread_session_options

ort = import_onnxruntime()


def toy_step() -> bytes:
    """w' = w - lr * (mean_b(x) * scale + seed/1000), loss = mean((x @ w) - labels)^2."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes = [
        helper.make_node("Constant", [], ["ax"], value=helper.make_tensor("ax", i64, [1], [0])),
        helper.make_node("ReduceMean", ["x", "ax"], ["xm"], keepdims=0),
        helper.make_node("Mul", ["xm", "scale"], ["g0"]),
        helper.make_node("Cast", ["dropout_seed"], ["sf"], to=f),
        helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", f, [], [1e-3])),
        helper.make_node("Mul", ["sf", "k"], ["sk"]),
        helper.make_node("Add", ["g0", "sk"], ["g"]),
        helper.make_node("Mul", ["g", "lr"], ["d"]),
        helper.make_node("Sub", ["w", "d"], ["new/w"]),
        helper.make_node("MatMul", ["x", "w"], ["p"]),
        helper.make_node("Cast", ["labels"], ["lf"], to=f),
        helper.make_node("Sub", ["p", "lf"], ["e"]),
        helper.make_node("Mul", ["e", "e"], ["e2"]),
        helper.make_node("ReduceMean", ["e2"], ["loss"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "step",
        [
            helper.make_tensor_value_info("w", f, [3]),
            helper.make_tensor_value_info("scale", f, [3]),
            helper.make_tensor_value_info("x", f, ["batch", 3]),
            helper.make_tensor_value_info("labels", i64, ["batch"]),
            helper.make_tensor_value_info("lr", f, []),
            helper.make_tensor_value_info("dropout_seed", i64, []),
        ],
        [
            helper.make_tensor_value_info("loss", f, []),
            helper.make_tensor_value_info("new/w", f, [3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return model.SerializeToString()


def session(model: bytes):  # noqa: ANN201
    so = single_thread_session_options(ort)
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def test_epoch_graph_gives_the_states_and_losses_of_as_many_steps() -> None:
    step_bytes = toy_step()
    step = session(step_bytes)
    per_step = [v for v in step.get_inputs() if v.name in ("x", "labels", "dropout_seed")]
    model = epoch.epoch_model(step_bytes, updates=[("w", "new/w")], per_step=per_step)
    onnx.checker.check_model(onnx.load_from_string(model), full_check=True)
    loop = session(model)

    rng = np.random.default_rng(0)
    steps, batch = 5, 4
    w = rng.normal(size=3).astype(np.float32)
    scale = rng.normal(size=3).astype(np.float32)
    lr = np.array(0.1, dtype=np.float32)
    xs = rng.normal(size=(steps, batch, 3)).astype(np.float32)
    ys = rng.integers(0, 3, size=(steps, batch)).astype(np.int64)
    seeds = np.array([11, 22, 33, 44, 55], dtype=np.int64)

    state, losses = w, []
    for k in range(steps):
        loss, state = step.run(
            None,
            {"w": state, "scale": scale, "x": xs[k], "labels": ys[k], "lr": lr,
             "dropout_seed": np.array(seeds[k])},
        )  # fmt: skip
        losses.append(loss)
    final, got_losses = loop.run(
        None,
        {"steps": np.array(steps, dtype=np.int64), "init/w": w, "scale": scale, "lr": lr,
         "epoch/x": xs, "epoch/labels": ys, "epoch/dropout_seed": seeds},
    )  # fmt: skip
    assert [o.name for o in loop.get_outputs()] == ["final/w", "losses"]
    assert np.array_equal(final, state)  # bit for bit
    assert np.array_equal(got_losses, np.array(losses))
    assert not np.array_equal(final, w)


def test_a_step_graph_without_the_named_slot_is_refused_with_its_name() -> None:
    step_bytes = toy_step()
    per_step = [v for v in session(step_bytes).get_inputs() if v.name == "x"]
    with pytest.raises(WireError, match="no input or output.*'v'"):
        epoch.epoch_model(step_bytes, updates=[("v", "new/v")], per_step=per_step)
    with pytest.raises(WireError):
        epoch.epoch_model(b"\x0a\xff", updates=[], per_step=[])

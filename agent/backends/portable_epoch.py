"""The portable step wrapped in an ONNX ``Loop``: many optimizer steps per ``session.run``.

A small model's step costs less than the Python, binding and ``run`` overhead around it (the
digits MLP: ~50 us of ~100 us per step). The epoch graph runs ``steps`` iterations of the
unchanged step graph as the body of one ``Loop``: the state the step changes is loop-carried
(ONNX Runtime hands each iteration's outputs to the next without copying), the batches come
as one tensor per batch input with a leading ``steps`` axis that the body slices with
``Gather(iteration)``, and the losses are the loop's scan output. Each iteration computes
exactly what one run of the step graph computes, so the result is bit-identical.

Built in the agent from the bundle's verified ``portable_step*.onnx`` bytes (no onnx package:
``onnx_wire.py``), so every bundle with a portable step gets it, with no export cost.

Names (the step graph's names are used inside the body; ONNX forbids reusing them outside):

- inputs: ``steps`` (int64 trip count), ``init/<slot>`` for every slot the step changes, the
  step's other inputs under their own names (frozen parameters, ``lr``, ``weight_decay``), and
  ``epoch/<name>`` (shape ``[steps, *step shape]``) for every per-step input: the batch
  inputs, the labels and, with dropout, ``dropout_seed`` (one seed per step);
- outputs: ``final/<slot>`` for every slot the step changes, then ``losses`` (``[steps]``).
"""

from __future__ import annotations

from typing import Any

from . import onnx_wire as w

STEPS = "steps"
LOSSES = "losses"
_ITERATION, _COND_IN, _COND_OUT = "epoch_iteration", "epoch_cond_in", "epoch_cond_out"


def initial_name(slot: str) -> str:
    return f"init/{slot}"


def final_name(slot: str) -> str:
    return f"final/{slot}"


def per_step_name(name: str) -> str:
    return f"epoch/{name}"


def epoch_model(
    step_model: bytes,
    *,
    updates: list[tuple[str, str]],
    per_step: list[Any],
    loss_output: str = "loss",
) -> bytes:
    """The epoch model's bytes for the step model ``step_model``.

    ``updates``: (slot, the step's output with its new value) for every slot a step changes;
    ``per_step``: the step's per-step inputs as ``onnxruntime`` describes them
    (``session.get_inputs()`` entries: ``.name``, ``.type``, ``.shape``).
    """
    model = list(w.fields(step_model))
    graphs = [value for number, _, value in model if number == w.MODEL_GRAPH]
    if len(graphs) != 1 or not isinstance(graphs[0], bytes):
        raise w.WireError("the step model has no graph")
    graph = list(w.fields(graphs[0]))
    inputs = {w.name_of(v): v for n, _, v in graph if n == w.GRAPH_INPUT and isinstance(v, bytes)}
    outputs = {w.name_of(v): v for n, _, v in graph if n == w.GRAPH_OUTPUT and isinstance(v, bytes)}
    per_step_names = [value.name for value in per_step]
    changing = [slot for slot, _ in updates]
    missing = [n for n in (*changing, *per_step_names) if n not in inputs]
    missing += [o for o in (*(out for _, out in updates), loss_output) if o not in outputs]
    if missing:
        raise w.WireError(f"the step graph has no input or output {missing[:3]}")

    body = _body(graph, inputs, outputs, updates, per_step_names, loss_output)
    loop = w.node(
        "Loop",
        [STEPS, "", *(initial_name(s) for s in changing)],
        [*(final_name(s) for s in changing), LOSSES],
        "epoch_loop",
        w.graph_attribute("body", body),
    )
    outer_inputs = [w.tensor_info(STEPS, w.INT64, [])]
    outer_inputs += [w.renamed(inputs[s], initial_name(s)) for s in changing]
    fixed = set(changing) | set(per_step_names)
    outer_inputs += [v for name, v in inputs.items() if name not in fixed]
    outer_inputs += [
        w.tensor_info(per_step_name(v.name), _ELEM_TYPES[v.type], [STEPS, *v.shape])
        for v in per_step
    ]
    outer_outputs = [w.renamed(outputs[out], final_name(s)) for s, out in updates]
    outer_outputs.append(w.tensor_info(LOSSES, _loss_type(outputs[loss_output]), [STEPS]))
    outer = w.message(
        w.sub(w.GRAPH_NODE, loop),
        w.text(w.GRAPH_NAME, "portable_epoch"),
        *(w.sub(w.GRAPH_INPUT, v) for v in outer_inputs),
        *(w.sub(w.GRAPH_OUTPUT, v) for v in outer_outputs),
    )
    kept = b"".join(w.encode(*f) for f in model if f[0] != w.MODEL_GRAPH)
    return kept + w.encode(w.MODEL_GRAPH, w.LENGTH, outer)


def _body(
    graph: list[w.Field],
    inputs: dict[str, bytes],
    outputs: dict[str, bytes],
    updates: list[tuple[str, str]],
    per_step: list[str],
    loss_output: str,
) -> bytes:
    """The step graph as a Loop body: (iteration, cond, carried slots) -> (cond, new slots,
    loss); per-step inputs are sliced from the outer ``epoch/<name>`` tensors."""
    slices = [
        w.node("Gather", [per_step_name(n), _ITERATION], [n], f"epoch_slice_{i}",
               w.int_attribute("axis", 0))
        for i, n in enumerate(per_step)
    ]  # fmt: skip
    kept = [f for f in graph if f[0] not in (w.GRAPH_INPUT, w.GRAPH_OUTPUT, w.GRAPH_NAME)]
    body_inputs = [w.tensor_info(_ITERATION, w.INT64, []), w.tensor_info(_COND_IN, w.BOOL, [])]
    body_inputs += [inputs[slot] for slot, _ in updates]
    body_outputs = [w.tensor_info(_COND_OUT, w.BOOL, [])]
    body_outputs += [outputs[out] for _, out in updates] + [outputs[loss_output]]
    return w.message(
        w.text(w.GRAPH_NAME, "portable_step"),
        *(w.sub(w.GRAPH_NODE, s) for s in slices),
        *kept,
        w.sub(w.GRAPH_NODE, w.node("Identity", [_COND_IN], [_COND_OUT], "epoch_cond")),
        *(w.sub(w.GRAPH_INPUT, v) for v in body_inputs),
        *(w.sub(w.GRAPH_OUTPUT, v) for v in body_outputs),
    )


_ELEM_TYPES = {
    "tensor(float)": w.FLOAT,
    "tensor(int64)": w.INT64,
    "tensor(int32)": 6,
    "tensor(bool)": w.BOOL,
    "tensor(double)": 11,
}


def _loss_type(value_info: bytes) -> int:
    """The loss output's element type (float32 for every exported step)."""
    for number, _, value in w.fields(value_info):
        if number == w.VALUE_TYPE and isinstance(value, bytes):
            for n1, _, tensor in w.fields(value):
                if n1 == w.TYPE_TENSOR and isinstance(tensor, bytes):
                    for n2, _, elem in w.fields(tensor):
                        if n2 == w.TENSOR_ELEM_TYPE and isinstance(elem, int):
                            return elem
    return w.FLOAT

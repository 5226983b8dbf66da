"""Build ``portable_step.onnx`` into a bundle directory and describe it in the manifest.

``add_portable_step`` is the exporter's one hook: it traces the training step, exports it,
proves ONNX Runtime loads it, checks it against PyTorch, and returns the manifest's ``portable``
section and the numbers for ``verification.portable`` (the exporter adds the backend). A
model the portable step cannot express still exports (for ``ort-training`` only); the
manifest says why.

One step graph per optimizer (``layout.step_file``). With several, the step is traced and
exported once with every optimizer's update as outputs (``step.CombinedStep``; the export is
cached by ``trace_cache``) and each optimizer's file is cut out of it (``split.py``), then
checked on its own. If any optimizer's step fails, the bundle has no portable step: an agent
must be able to run whichever optimizer the round names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedge.protocol.manifest import PortableStep, StateSlot, TensorSpec
from fedge.protocol.tensors import encode_tensors

from .. import onnx_graph, preflight
from .. import verify as parity
from ..artifacts import OptimizerSpec
from ..errors import ExportError
from .failure import describe, location_of_slot
from .layout import (
    BUFFERS_FILE,
    LOSS_NAME,
    LR_NAME,
    SEED_NAME,
    WD_NAME,
    StepLayout,
    build_layout,
    step_file,
    union_slots,
)
from .seeded_dropout import RANDOM_ONNX_OPS, needs_seed
from .split import extract_step
from .step import LOSS_FUNCTIONS, CombinedStep, TrainingStep, make_step
from .trace import BakedBatch, StepLoweringError, check_loads, export_step
from .verify import BATCH_SIZES, TOLERANCE, step_parity

log = logging.getLogger(__name__)

BACKEND = "ort-portable"
SEED = 4321


class PortableUnsupported(ExportError):
    """The model's training step cannot be written as a portable ONNX graph."""

    def __init__(self, reason: str, *, numbers: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.numbers = {"failed_check": numbers} if numbers else {}


def add_portable_step(
    *,
    model: nn.Module,
    bundle_dir: Path,
    loss: str,
    optimizers: list[OptimizerSpec],
    trainable: list[str],
    input_specs: tuple[TensorSpec, ...] = (),
    label_spec: TensorSpec,
    num_classes: int | None,
    verify: bool = True,
    input_spec: TensorSpec | None = None,
) -> tuple[PortableStep, dict[str, dict[str, Any]]]:
    """Write one portable step per optimizer into ``bundle_dir``; return the manifest's
    ``portable`` section and, per optimizer type, the numbers for its verification.

    Never fails the export: a model the step cannot express, or whose step disagrees with
    PyTorch beyond tolerance, is recorded without the ``ort-portable`` backend, with the
    reason (stage, module path and type, operator or numbers) in ``portable.reason``.
    ``input_specs`` are the model's inputs in ``forward`` order (``input_spec``: its one input).
    """
    if not input_specs:
        if input_spec is None:
            raise ExportError("add_portable_step needs input_specs (or input_spec)")
        input_specs = (input_spec,)
    layouts: list[StepLayout] = []
    numbers: dict[str, dict[str, Any]] = {}
    files = [step_file(o.type, i) for i, o in enumerate(optimizers)]
    optimizer: OptimizerSpec | None = None  # the one being checked, for the reason
    try:
        example = _batches(input_specs, label_spec, loss, num_classes)[0]
        written = _write_steps(
            model, bundle_dir, files, loss, optimizers, trainable, input_specs, label_spec,
            example,
        )  # fmt: skip
        for optimizer, (layout, initial, session) in zip(optimizers, written, strict=True):
            fresh = _batches(input_specs, label_spec, loss, num_classes)  # same values
            numbers[optimizer.type] = _check(
                model, session, layout, initial, fresh, loss, optimizer, verify
            )
            layouts.append(layout)
    except PortableUnsupported as exc:
        checking = (
            f"{optimizer.type} step: " if optimizer is not None and len(optimizers) > 1 else ""
        )
        reason = f"{checking}{exc}"
        log.warning("no portable training step for this model: %s", reason)
        for name in (*files, BUFFERS_FILE):
            (bundle_dir / name).unlink(missing_ok=True)
        failed = {"skipped": True, "reason": reason, **exc.numbers}
        return PortableStep(False, reason=reason), {o.type: failed for o in optimizers}
    proto = _load(bundle_dir / files[0])
    first = layouts[0]
    section = PortableStep(
        available=True,
        file=files[0],
        buffers_file=BUFFERS_FILE if first.names("buffer") else None,
        state=tuple(
            StateSlot(s.name, s.kind, tuple(s.shape), s.dtype, s.output)
            for s in union_slots(layouts)
        ),
        input_names=first.model_inputs,
        label_name=first.label_name,
        lr_name=LR_NAME,
        seed_name=SEED_NAME if first.seeded else None,
        weight_decay_name=WD_NAME if any(lay.decayed for lay in layouts) else None,
        outputs=tuple(first.output_names),
        dynamic_batch=True,
        opset=onnx_graph.opset_of(proto),
        ir_version=int(proto.ir_version),
    )
    return section, numbers


def _check(
    model: nn.Module,
    session: Any,
    layout: StepLayout,
    initial: dict[str, np.ndarray],
    batches: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]],
    loss: str,
    optimizer: OptimizerSpec,
    verify: bool,
) -> dict[str, Any]:
    """Parity numbers; PortableUnsupported (with the numbers) when the step disagrees.

    ``session``: the step's InferenceSession, built once when proving ONNX Runtime loads it.
    """
    if not verify:
        return {"skipped": True}
    try:
        numbers = step_parity(
            model,
            session,
            layout,
            initial,
            batches,
            loss=loss,
            optimizer=optimizer,
        )
    except Exception as exc:  # ONNX Runtime raises its own types; the message is the reason
        raise PortableUnsupported(
            describe("running the portable step in ONNX Runtime", exc, None)
        ) from exc
    if not (
        numbers["step_max_abs_diff"] <= TOLERANCE
        and numbers["loss_max_abs_diff"] <= numbers["loss_tolerance"]
    ):
        worst = numbers["step_worst_slot"]
        raise PortableUnsupported(
            f"the portable step does not match PyTorch after {numbers['steps']} steps (batches "
            f"{', '.join(map(str, numbers['batch_sizes']))}): largest state difference "
            f"{numbers['step_max_abs_diff']:.3g} in '{worst}' of "
            f"{location_of_slot(model, worst)}, loss difference "
            f"{numbers['loss_max_abs_diff']:.3g} (state tolerance {TOLERANCE:g}, loss tolerance "
            f"{numbers['loss_tolerance']:.3g})",
            numbers=numbers,
        )
    return numbers


def _write_steps(
    model: nn.Module,
    bundle_dir: Path,
    files: list[str],
    loss: str,
    optimizers: list[OptimizerSpec],
    trainable: list[str],
    input_specs: tuple[TensorSpec, ...],
    label_spec: TensorSpec,
    example: tuple[tuple[torch.Tensor, ...], torch.Tensor],
) -> list[tuple[StepLayout, dict[str, np.ndarray], Any]]:
    """Write each optimizer's step file; return each one's layout, initial state and session.

    Several optimizers: one trace and one ONNX export of the combined step (every update from
    one forward and backward), each step cut out of it (``split.py``): the second optimizer
    then costs a few graph nodes, not a second export. Should the cut fail, each optimizer is
    traced on its own (the result is the same, only slower).
    """
    if loss not in LOSS_FUNCTIONS:
        raise PortableUnsupported(f"loss {loss!r} has no portable implementation")
    for optimizer in optimizers:
        if optimizer.type not in ("sgd", "adamw"):
            raise PortableUnsupported(
                f"optimizer {optimizer.type!r} has no portable implementation"
            )
    params = {n: p.detach().cpu().numpy().copy() for n, p in model.named_parameters()}
    buffers = {n: b.detach().cpu().numpy().copy() for n, b in model.named_buffers()}
    layouts = [
        build_layout(
            parameters={n: (tuple(a.shape), a.dtype.name) for n, a in params.items()},
            trainable=trainable,
            buffers={n: (tuple(a.shape), a.dtype.name) for n, a in buffers.items()},
            optimizer=optimizer.type,
            input_name=tuple(s.name for s in input_specs),
            label_name=label_spec.name,
            seeded=needs_seed(model),
        )
        for optimizer in optimizers
    ]
    initials = [_initial(layout, {**params, **buffers}) for layout in layouts]
    protos: list[Any] | None = None
    if len(optimizers) > 1:
        try:
            protos = _combined(model, layouts, loss, optimizers, example)
        except ValueError as exc:  # the cut, not the model: trace each optimizer instead
            log.warning("cannot split the combined step (%s); tracing each optimizer", exc)
    if protos is None:
        protos = [
            _export(make_step(model, layout, loss=loss, optimizer=optimizer), layout, example,
                    layout.input_names, layout.output_names, initial, optimizer)
            for layout, initial, optimizer in zip(layouts, initials, optimizers, strict=True)
        ]  # fmt: skip
    sessions = []
    for proto, name in zip(protos, files, strict=True):
        onnx_graph.save_model(proto, bundle_dir / name)
        try:
            sessions.append(check_loads(str(bundle_dir / name)))
        except Exception as exc:
            raise PortableUnsupported(
                describe("loading the portable step in ONNX Runtime", exc, None)
            ) from exc
    if buffers:
        (bundle_dir / BUFFERS_FILE).write_bytes(encode_tensors(buffers))
    return list(zip(layouts, initials, sessions, strict=True))


def _initial(layout: StepLayout, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    initial = dict(values)
    for slot in layout.slots:
        if slot.kind == "optimizer":
            initial[slot.name] = np.zeros(slot.shape, dtype=slot.dtype)
    return initial


def _combined(
    model: nn.Module,
    layouts: list[StepLayout],
    loss: str,
    optimizers: list[OptimizerSpec],
    example: tuple[tuple[torch.Tensor, ...], torch.Tensor],
) -> list[Any]:
    """Each optimizer's step, cut from one export of ``CombinedStep``."""
    first = layouts[0]
    combined = StepLayout(
        union_slots(layouts),
        first.model_inputs,
        first.label_name,
        first.seeded,
        any(layout.decayed for layout in layouts),
    )
    shared = [LOSS_NAME] + [s.output for s in first.slots if s.kind == "buffer" and s.output]
    cuts: list[dict[str, str]] = []
    outputs = list(shared)
    for i, (optimizer, layout) in enumerate(zip(optimizers, layouts, strict=True)):
        # the default's outputs keep their names; the others' are prefixed until cut out
        prefix = "" if i == 0 else f"{optimizer.type}/"
        own = [s.output for s in layout.slots if s.kind in ("parameter", "optimizer") and s.output]
        outputs += [prefix + name for name in own]
        cuts.append(
            {(name if name in shared else prefix + name): name for name in layout.output_names}
        )
    initial = _initial(combined, {})
    step = CombinedStep(model, combined, loss=loss, optimizers=optimizers)
    values = {**_model_values(model), **initial}
    proto = _export(
        step, combined, example, combined.input_names, outputs, values, optimizers[0],
        weight_decay=next((o.weight_decay for o in optimizers if o.type == "adamw"), 0.0),
    )  # fmt: skip
    return [
        extract_step(proto, layout.input_names, cut)
        for layout, cut in zip(layouts, cuts, strict=True)
    ]


def _model_values(model: nn.Module) -> dict[str, np.ndarray]:
    values = {n: p.detach().cpu().numpy().copy() for n, p in model.named_parameters()}
    values.update({n: b.detach().cpu().numpy().copy() for n, b in model.named_buffers()})
    return values


def _export(
    step: TrainingStep,
    layout: StepLayout,
    example: tuple[tuple[torch.Tensor, ...], torch.Tensor],
    input_names: list[str],
    output_names: list[str],
    initial: dict[str, np.ndarray],
    optimizer: OptimizerSpec,
    *,
    weight_decay: float | None = None,
) -> Any:
    """Trace and export ``step`` (PortableUnsupported naming the stage and module if not)."""
    xs, y = example
    # Every slot gets its own tensor: aliased example tensors would become one graph input.
    args = [torch.from_numpy(initial[s.name].copy()) for s in layout.slots]
    args += [*xs, y, torch.tensor(optimizer.lr, dtype=torch.float32)]
    if layout.decayed:
        decay = optimizer.weight_decay if weight_decay is None else weight_decay
        args.append(torch.tensor(decay, dtype=torch.float32))
    if layout.seeded:
        args.append(torch.tensor(SEED, dtype=torch.int64))
    try:
        proto = export_step(
            step,
            args,
            input_names=input_names,
            output_names=output_names,
            batch_inputs=(*layout.model_inputs, layout.label_name),
        )
    except StepLoweringError as exc:
        where = step.caller_of(exc.operator)
        raise PortableUnsupported(describe(exc.STAGE, exc.cause, where)) from exc
    except BakedBatch as exc:
        raise PortableUnsupported(str(exc)) from exc
    except Exception as exc:  # tracing raises many types; the chain and the module say why
        raise PortableUnsupported(
            describe("tracing the training step", exc, step.failed_in)
        ) from exc
    random_ops = sorted({n.op_type for n in proto.graph.node} & RANDOM_ONNX_OPS)
    if random_ops:
        raise PortableUnsupported(
            f"the training step draws random numbers outside nn.Dropout and attention dropout "
            f"({', '.join(random_ops)}): a portable step must be reproducible from the round's "
            "seed; use nn.Dropout / F.dropout for dropout, or train with backend ort-training"
        )
    return proto


def _batches(
    input_specs: tuple[TensorSpec, ...], label_spec: TensorSpec, loss: str, num_classes: int | None
) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    """Reproducible parity batches (8, 8, 5) shaped like the bundle's inputs and labels."""
    gen = torch.Generator().manual_seed(SEED)
    out = []
    for size in BATCH_SIZES:
        x = tuple(
            preflight.sample_inputs(s.sample_shape, s.dtype, batch=size, generator=gen)
            for s in input_specs
        )
        y = parity.sample_labels(
            loss, label_spec.sample_shape, batch=size, num_classes=num_classes, generator=gen
        )
        out.append((x, y))
    return out


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)

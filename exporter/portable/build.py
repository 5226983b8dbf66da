"""Build ``portable_step.onnx`` into a bundle directory and describe it in the manifest.

``add_portable_step`` is the exporter's one hook: it traces the training step, exports it,
proves ONNX Runtime loads it, checks it against PyTorch, and fills the manifest's ``portable``
section, ``backends`` and ``verification.portable``. A model the portable step cannot express
still exports (for ``ort-training`` only); the manifest says why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedge.protocol.tensors import encode_tensors

from .. import onnx_graph, preflight
from .. import verify as parity
from ..artifacts import OptimizerSpec
from ..errors import ExportError
from .decompositions import UnsupportedBackward
from .layout import BUFFERS_FILE, LR_NAME, STEP_FILE, StepLayout, build_layout
from .step import LOSS_FUNCTIONS, make_step
from .trace import check_loads, export_step
from .verify import BATCH_SIZES, TOLERANCE, step_parity

log = logging.getLogger(__name__)

BACKEND = "ort-portable"
SEED = 4321


class PortableUnsupported(ExportError):
    """The model's training step cannot be written as a portable ONNX graph."""


def add_portable_step(
    manifest: dict[str, Any],
    *,
    model: nn.Module,
    bundle_dir: Path,
    loss: str,
    optimizer: OptimizerSpec,
    trainable: list[str],
    verify: bool = True,
) -> None:
    """Write the portable step into ``bundle_dir`` and record it in ``manifest`` (in place).

    Raises ExportError when the step exists but disagrees with PyTorch beyond tolerance
    (unless ``verify`` is False); a model the step cannot express is recorded, not raised.
    """
    verification = manifest.setdefault("verification", {})
    try:
        layout, initial = _write_step(manifest, model, bundle_dir, loss, optimizer, trainable)
    except PortableUnsupported as exc:
        log.warning("no portable training step for this model: %s", exc)
        for name in (STEP_FILE, BUFFERS_FILE):
            (bundle_dir / name).unlink(missing_ok=True)
        manifest["portable"] = {"available": False, "reason": str(exc)}
        verification["portable"] = {"skipped": True, "reason": str(exc)}
        return
    section = {
        "available": True,
        "file": STEP_FILE,
        "buffers_file": BUFFERS_FILE if layout.names("buffer") else None,
        "state": [s.to_manifest() for s in layout.slots],
        "inputs": {"input": layout.input_name, "label": layout.label_name, "lr": LR_NAME},
        "outputs": layout.output_names,
        "optimizer": optimizer.to_manifest(),
        "dynamic_batch": True,
        "opset": onnx_graph.opset_of(_load(bundle_dir / STEP_FILE)),
        "ir_version": int(_load(bundle_dir / STEP_FILE).ir_version),
    }
    manifest["portable"] = section
    backends = list(manifest.get("backends", []))
    if BACKEND not in backends:
        backends.append(BACKEND)
    manifest["backends"] = backends
    if not verify:
        verification["portable"] = {"skipped": True}
        return
    if preflight.has_active_dropout(model):
        verification["portable"] = {"skipped": True, "reason": "dropout makes a step random"}
        return
    numbers = step_parity(
        model,
        bundle_dir / STEP_FILE,
        layout,
        initial,
        _batches(manifest, loss),
        loss=loss,
        optimizer=optimizer,
    )
    verification["portable"] = numbers
    if (
        not numbers["step_max_abs_diff"] <= TOLERANCE
        or not numbers["loss_max_abs_diff"] <= TOLERANCE
    ):
        raise ExportError(
            f"the portable training step does not match PyTorch after {numbers['steps']} steps: "
            f"{numbers}; use --no-verify to export anyway"
        )


def _write_step(
    manifest: dict[str, Any],
    model: nn.Module,
    bundle_dir: Path,
    loss: str,
    optimizer: OptimizerSpec,
    trainable: list[str],
) -> tuple[StepLayout, dict[str, np.ndarray]]:
    if loss not in LOSS_FUNCTIONS:
        raise PortableUnsupported(f"loss {loss!r} has no portable implementation")
    if optimizer.type not in ("sgd", "adamw"):
        raise PortableUnsupported(f"optimizer {optimizer.type!r} has no portable implementation")
    params = {n: p.detach().cpu().numpy().copy() for n, p in model.named_parameters()}
    buffers = {n: b.detach().cpu().numpy().copy() for n, b in model.named_buffers()}
    layout = build_layout(
        parameters={n: (tuple(a.shape), a.dtype.name) for n, a in params.items()},
        trainable=trainable,
        buffers={n: (tuple(a.shape), a.dtype.name) for n, a in buffers.items()},
        optimizer=optimizer.type,
        input_name=manifest["inputs"][0]["name"],
        label_name=manifest["label"]["name"],
    )
    initial: dict[str, np.ndarray] = {**params, **buffers}
    for slot in layout.slots:
        if slot.kind == "optimizer":
            initial[slot.name] = np.zeros(slot.shape, dtype=slot.dtype)
    x, y = _batches(manifest, loss)[0]
    # Every slot gets its own tensor: aliased example tensors would become one graph input.
    args = [torch.from_numpy(initial[s.name].copy()) for s in layout.slots]
    args += [x, y, torch.tensor(optimizer.lr, dtype=torch.float32)]
    step = make_step(model, layout, loss=loss, optimizer=optimizer)
    try:
        proto = export_step(
            step,
            args,
            input_names=layout.input_names,
            output_names=layout.output_names,
            batch_inputs=(layout.input_name, layout.label_name),
        )
    except UnsupportedBackward as exc:
        raise PortableUnsupported(f"{exc} is not supported yet") from exc
    except Exception as exc:  # tracing/export raise many types; the message is the reason
        raise PortableUnsupported(
            f"tracing or exporting the training step failed ({type(exc).__name__}): "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    onnx_graph.save_model(proto, bundle_dir / STEP_FILE)
    try:
        check_loads(str(bundle_dir / STEP_FILE))
    except Exception as exc:
        raise PortableUnsupported(f"ONNX Runtime cannot load the portable step: {exc}") from exc
    if buffers:
        (bundle_dir / BUFFERS_FILE).write_bytes(encode_tensors(buffers))
    return layout, initial


def _batches(manifest: dict[str, Any], loss: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Reproducible parity batches (8, 8, 5) shaped like the bundle's input and labels."""
    spec, label = manifest["inputs"][0], manifest["label"]
    gen = torch.Generator().manual_seed(SEED)
    out = []
    for size in BATCH_SIZES:
        x = preflight.sample_inputs(spec["shape"][1:], spec["dtype"], batch=size, generator=gen)
        y = parity.sample_labels(
            loss,
            label["shape"][1:],
            batch=size,
            num_classes=manifest.get("num_classes"),
            generator=gen,
        )
        out.append((x, y))
    return out


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)

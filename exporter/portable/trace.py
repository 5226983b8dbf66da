"""Trace a step function with ``make_fx`` and export it as one ONNX graph ORT 1.19 can load.

``make_fx(tracing_mode="symbolic")`` keeps the batch axis symbolic; the torch.export-based ONNX
exporter (``dynamo=True``) writes it with ``optimize=False`` (its optimizer folds ``x + 1e-8``
away and drops AdamW's eps). ONNX Runtime 1.19 reads IR <= 10 and opset <= 21: newer graphs
are converted down and then loaded once to prove it.

The ONNX export (``torch.onnx.export`` on the traced graph) is most of an export's time and a
pure function of the traced graph, so it is cached on disk (``trace_cache.py``), keyed by the
graph's code, constants and input shapes: a second export of the same architecture (new weights
or learning rate: both are graph inputs) skips it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from fedge.protocol.ort_runtime import import_onnxruntime, single_thread_session_options

from . import trace_cache
from .decompositions import decomposition_table

log = logging.getLogger(__name__)

MAX_IR_VERSION = 10
MAX_OPSET = 21
MIN_OPSET = 18  # the torch.export-based exporter writes opset 18 and later
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration", "torch.onnx")


def export_step(
    step: Callable[..., tuple[torch.Tensor, ...]],
    args: Sequence[torch.Tensor],
    *,
    input_names: list[str],
    output_names: list[str],
    batch_inputs: Sequence[str],
    opset: int = MIN_OPSET,
) -> onnx.ModelProto:
    """Trace ``step`` on ``args`` and export it; ``batch_inputs`` get a dynamic axis 0."""
    dynamic = [n in batch_inputs for n in input_names]
    gm = make_fx(step, tracing_mode="fake", decomposition_table=decomposition_table())(
        *_fake_inputs(args, dynamic)
    )
    settings = (input_names, output_names, sorted(batch_inputs), max(opset, MIN_OPSET))
    key = trace_cache.graph_key(gm, args, settings, exporter_source=Path(__file__).read_bytes())
    cached = trace_cache.load(key)
    if cached is not None:
        return cached
    proto = fit_runtime(_export_graph(gm, args, input_names, output_names, batch_inputs, opset))
    trace_cache.store(key, proto)
    return proto


def _fake_inputs(args: Sequence[torch.Tensor], dynamic_batch: Sequence[bool]) -> list[Any]:
    """Fake tensors whose batch axis (only) is symbolic.

    ``make_fx(tracing_mode="symbolic")`` makes every axis of every input symbolic: tracing
    then spends most of its time on thousands of symbolic size expressions for parameter and
    optimizer-state shapes that never change. Only the batch axis needs a symbol.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import (
        DimDynamic,
        ShapeEnv,
        StatelessSymbolicContext,
    )

    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    fakes = []
    for tensor, dynamic in zip(args, dynamic_batch, strict=True):
        sizes = [
            DimDynamic.DYNAMIC if dynamic and axis == 0 else DimDynamic.STATIC
            for axis in range(tensor.dim())
        ]
        context = StatelessSymbolicContext(dynamic_sizes=sizes)
        fakes.append(mode.from_tensor(tensor, symbolic_context=context))
    return fakes


def _export_graph(
    gm: torch.fx.GraphModule,
    args: Sequence[torch.Tensor],
    input_names: list[str],
    output_names: list[str],
    batch_inputs: Sequence[str],
    opset: int,
) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} if n in batch_inputs else None for n in input_names)
    quiet = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                gm,
                tuple(args),
                dynamo=True,
                optimize=False,
                opset_version=max(opset, MIN_OPSET),
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic,
                verbose=False,
            )
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    return program.model_proto


def fit_runtime(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Bring ``proto`` within ORT 1.19's limits (opset <= 21, IR <= 10)."""
    opset = _default_opset(proto)
    if opset > MAX_OPSET:
        from onnx import version_converter

        log.info("converting the portable step from opset %d to %d", opset, MAX_OPSET)
        proto = version_converter.convert_version(proto, MAX_OPSET)
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
    return proto


def check_loads(path: str) -> None:
    """Create a plain InferenceSession on ``path`` (raises what ONNX Runtime raises)."""
    ort = import_onnxruntime(block_torch=False)
    ort.InferenceSession(
        path, single_thread_session_options(ort), providers=["CPUExecutionProvider"]
    )


def _default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0

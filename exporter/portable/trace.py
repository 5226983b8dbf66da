"""Trace a step function with ``make_fx`` and export it as one ONNX graph ORT 1.19 can load.

``make_fx(tracing_mode="symbolic")`` keeps the batch axis symbolic; the torch.export-based ONNX
exporter (``dynamo=True``) writes it with ``optimize=False`` (its optimizer folds ``x + 1e-8``
away and drops AdamW's eps). ONNX Runtime 1.19 reads IR <= 10 and opset <= 21: newer graphs
are converted down and then loaded once to prove it.

The trace runs at a batch size no other dimension of the step has (a prime): a symbolic batch
that happens to equal, say, a GRU's hidden size is specialized to that number by the first
shape comparison, and the exported graph would then accept only that batch.

The trace and the ONNX export are most of an export's time and a pure function of what the
step computes, so their result is cached on disk (``trace_cache.py``), keyed by one eager run
of the step (``step_key.py``: its ATen calls, constants and shapes, fedge's step builder and
the library versions): a second export of the same architecture (new weights or learning rate:
both are graph inputs) neither traces nor exports. ``rewrites.py`` then replaces what ONNX
Runtime cannot simplify itself (MaxPool's index offsets) before the graph is cached.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import onnx
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.nn.attention import SDPBackend, sdpa_kernel

from fedge.protocol.ort_runtime import import_onnxruntime, single_thread_session_options

from . import rewrites, step_key, trace_cache
from .decompositions import decomposition_table
from .failure import describe, operator_in

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
    args = _at_trace_batch(args, [n in batch_inputs for n in input_names])
    dynamic = [n in batch_inputs for n in input_names]
    settings = (input_names, output_names, sorted(batch_inputs), max(opset, MIN_OPSET))
    key = _cache_key(step, args, settings)
    cached = trace_cache.load(key) if key is not None else None
    if cached is not None:
        return cached  # no trace, no export: the step computes what it computed then
    # Only the batch axis symbolic is 1.6-2.9x faster to trace; a few models (LSTM) then get
    # their batch specialized by a shape comparison, and are traced again fully symbolic.
    # The fake-tensor trace also trips over a few operators (dropout's aten.empty_permuted):
    # any failure of the fast path falls back to the fully symbolic trace.
    for only_batch_symbolic in (True, False):
        try:
            gm = _trace(step, args, dynamic, only_batch_symbolic)
            proto = _export_graph(gm, args, input_names, output_names, batch_inputs, opset)
            _require_dynamic_batch(proto, batch_inputs)
            rewrites.plane_offsets_from_shape(proto)
        except Exception as exc:  # noqa: BLE001 - the second, fully symbolic pass decides
            if not only_batch_symbolic:
                raise
            log.info("batch-only trace failed (%s); tracing with every axis symbolic", exc)
            continue
        proto = fit_runtime(proto)
        if key is not None:
            trace_cache.store(key, proto)
        return proto
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _cache_key(
    step: Callable[..., tuple[torch.Tensor, ...]],
    args: Sequence[torch.Tensor],
    settings: Sequence[Any],
) -> str | None:
    """The export cache's key (``step_key.py``), or None (no caching) when the cache is off
    or the step cannot run eagerly; the trace then reports what is wrong with it."""
    if trace_cache.cache_dir() is None:
        return None
    try:
        return step_key.step_key(step, args, settings, context=_trace_context)
    except Exception as exc:  # noqa: BLE001 - the trace below raises the error that explains
        log.info("no export cache key (the step does not run eagerly: %s)", exc)
        return None


@contextlib.contextmanager
def _trace_context() -> Iterator[None]:
    # oneDNN off: on CPU the LSTM decomposition otherwise picks aten.mkldnn_rnn_layer (it only
    # checks whether the *input* requires grad). The math attention kernel: the fused (flash)
    # ones have backward operators without an ONNX translation. Both match eager to rounding.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mkldnn.flags() warns about a deprecated TF32 setter
        with torch.backends.mkldnn.flags(enabled=False), sdpa_kernel([SDPBackend.MATH]):
            yield


def _trace(
    step: Callable[..., tuple[torch.Tensor, ...]],
    args: Sequence[torch.Tensor],
    dynamic: Sequence[bool],
    only_batch_symbolic: bool,
) -> torch.fx.GraphModule:
    with _trace_context():
        if only_batch_symbolic:
            return make_fx(step, tracing_mode="fake", decomposition_table=decomposition_table())(
                *_fake_inputs(args, dynamic)
            )
        return make_fx(step, tracing_mode="symbolic", decomposition_table=decomposition_table())(
            *args
        )


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
    except Exception as exc:  # the exporter raises many types; the chain names the operator
        raise StepLoweringError(exc) from exc
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    return program.model_proto


class StepLoweringError(RuntimeError):
    """The traced step has an operator the ONNX exporter cannot translate (message: why)."""

    STAGE = "exporting the step to ONNX"

    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe(self.STAGE, cause, None))
        self.cause = cause
        self.operator = operator_in(cause)


class BakedBatch(RuntimeError):
    """The exported step accepts one batch size only (the trace specialized the batch axis)."""


def trace_batch_size(args: Sequence[torch.Tensor]) -> int:
    """The smallest prime >= 11 that is no dimension of any of ``args``."""
    taken = {int(d) for a in args for d in a.shape}
    size = 11
    while size in taken or any(size % k == 0 for k in range(2, int(size**0.5) + 1)):
        size += 1
    return size


def _at_trace_batch(args: Sequence[torch.Tensor], is_batch: Sequence[bool]) -> list[torch.Tensor]:
    batched = [a for a, b in zip(args, is_batch, strict=True) if b]
    size = trace_batch_size(args)
    out = []
    for a, b in zip(args, is_batch, strict=True):
        out.append(a[torch.arange(size) % a.shape[0]].contiguous() if b and batched else a)
    return out


def _require_dynamic_batch(proto: onnx.ModelProto, batch_inputs: Sequence[str]) -> None:
    for value in proto.graph.input:
        if value.name in batch_inputs:
            dims = value.type.tensor_type.shape.dim
            if dims and not dims[0].dim_param:
                raise BakedBatch(
                    f"the exported step fixes input {value.name!r} to batch size "
                    f"{dims[0].dim_value}: an operator specialized the batch axis while tracing"
                )


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


def check_loads(path: str) -> Any:
    """A plain InferenceSession on ``path`` (raises what ONNX Runtime raises); the parity
    check runs the step in it rather than building a second one."""
    ort = import_onnxruntime(block_torch=False)
    return ort.InferenceSession(
        path, single_thread_session_options(ort), providers=["CPUExecutionProvider"]
    )


def _default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0

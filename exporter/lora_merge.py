"""The plain inference graph of a LoRA bundle, and the proof that merging keeps the outputs.

``inference.onnx`` of a LoRA bundle computes the adapters (``x W^T + scale (x A^T) B^T``); a
deployed model should not: ``write_merged_inference`` exports the original model (no adapters)
as ``inference_merged.onnx``, whose Linear weights are named as in the original model.
``fedge model export`` fills it with ``merge_parameters`` (W + scale * B @ A).

``merge_parity`` checks it at export time with *non-zero* adapters (B starts at zero, which would
make any merge look right): both graphs on the same batch, parameters fed as graph inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedge.protocol.manifest_lora import LoraSpec, merge_parameters
from fedge.protocol.ort_runtime import import_onnxruntime, single_thread_session_options

from . import onnx_graph
from .errors import ExportError

MERGE_TOLERANCE = 1e-4
_SEED = 2024


def write_merged_inference(
    plain: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    params: dict[str, np.ndarray],
    *,
    opset: int,
    input_names: Sequence[str],
    output_name: str,
) -> None:
    """Export ``plain`` (the model before wrapping) in eval mode; ``params`` are its tensors."""
    proto = onnx_graph.export_onnx(
        plain,
        example,
        training=False,
        opset=opset,
        input_names=input_names,
        output_name=output_name,
    )
    onnx_graph.restore_initializers(proto, params)
    onnx_graph.require_initializers(proto, list(params), "merged inference graph")
    onnx_graph.initializers_as_inputs(proto, list(params))
    onnx_graph.save_model(proto, path)


def merge_parity(
    spec: LoraSpec,
    adapter_graph: Path,
    merged_graph: Path,
    params: dict[str, np.ndarray],
    example: tuple[torch.Tensor, ...],
) -> float:
    """Max |adapter model - merged model| with random non-zero ``B``; ExportError past 1e-4."""
    rng = np.random.default_rng(_SEED)
    trial = dict(params)
    for a in spec.adapters:
        b = trial[a.lora_b]
        trial[a.lora_b] = rng.normal(0.0, 0.5, size=b.shape).astype(b.dtype)
    x = [t.numpy() for t in example]
    with_adapters = _run(adapter_graph, x, trial)
    merged = _run(merged_graph, x, merge_parameters(spec, trial))
    diff = float(np.max(np.abs(with_adapters.astype(np.float64) - merged)))
    if not diff <= MERGE_TOLERANCE:
        raise ExportError(
            f"the merged inference model differs from the LoRA model by {diff:.3g} "
            f"(tolerance {MERGE_TOLERANCE:g})"
        )
    return diff


def _run(path: Path, x: list[np.ndarray], params: dict[str, np.ndarray]) -> np.ndarray:
    ort = import_onnxruntime(block_torch=False)
    session = ort.InferenceSession(
        str(path), single_thread_session_options(ort), providers=["CPUExecutionProvider"]
    )
    # Parameters are overridable initializers (onnx_graph.initializers_as_inputs), which
    # get_inputs() leaves out; every one must be fed, or the merge would go unchecked.
    names = [i.name for i in session.get_inputs()][: len(x)]
    overridable = {i.name for i in session.get_overridable_initializers()}
    missing = sorted(set(params) - overridable)
    if missing:
        raise ExportError(f"{path.name} does not take parameters {missing[:5]} as inputs")
    feed = {**dict(zip(names, x, strict=True)), **params}
    out: np.ndarray = session.run(None, feed)[0]
    return out

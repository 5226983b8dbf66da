"""Export a stored model version as a standalone inference ONNX file.

The bundle's ``inference.onnx`` gets that version's parameters as its initializers; a run with
federated standardization also gets ``(x - mean) / std`` prepended (two initializers, a ``Sub``
and a ``Div``), so the exported model takes raw features as the devices store them. A LoRA
bundle's adapters are merged into their base weights first (``W + alpha/rank * B @ A``) and
written into its ``inference_merged.onnx``: the deployed model is a plain one. Rewriting
initializers needs the ``onnx`` package (``pip install onnx==1.17.0``; it is part of
``fedge[exporter]``); everything else here is plain numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedge.protocol.bundle import Bundle
from fedge.protocol.errors import FedgeError
from fedge.protocol.manifest_lora import merge_parameters
from fedge.protocol.tensors import decode_tensors

from .store import Store


class ModelExportError(FedgeError):
    """A model version cannot be exported."""


def export_version(
    store: Store, run_id: str, version: int, bundle: Bundle, out: str | Path
) -> Path:
    """Write ``out``: the bundle's inference graph with model version ``version``'s weights."""
    run = next((r for r in store.runs() if r["run_id"] == run_id), None)
    if run is None:
        raise ModelExportError(f"run {run_id!r} not in the database")
    if run["bundle_hash"] != bundle.content_hash:
        raise ModelExportError(
            f"run {run_id} trained bundle {run['bundle_hash'][:12]}, not {bundle.content_hash[:12]}"
            "; pass the bundle the run was started with"
        )
    try:
        params = decode_tensors(store.version_params(run_id, version))
    except FedgeError as exc:
        raise ModelExportError(str(exc)) from None
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ModelExportError(
            "exporting a model version needs the onnx package: pip install onnx==1.17.0"
        ) from None
    graph = "inference.onnx"
    lora = bundle.manifest.lora
    if lora is not None:  # deploy a plain model: adapters merged into their base weights
        try:
            params = merge_parameters(lora, params)
        except FedgeError as exc:
            raise ModelExportError(f"model version {version}: {exc}") from None
        graph = lora.merged_inference
    model = onnx.load(str(bundle.file(graph)))
    replaced = set()
    for i, init in enumerate(model.graph.initializer):
        if init.name in params:
            value = params[init.name]
            old = numpy_helper.to_array(init)
            if old.shape != value.shape:
                raise ModelExportError(
                    f"'{init.name}' is {list(old.shape)} in the graph, {list(value.shape)} stored"
                )
            model.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(np.ascontiguousarray(value.astype(old.dtype)), init.name)
            )
            replaced.add(init.name)
    missing = sorted(set(params) - replaced)
    if missing:
        raise ModelExportError(f"inference graph has no initializer for {missing[:5]}")
    model.doc_string = f"fedge run {run_id} model version {version}"
    stats = store.standardization(run_id)
    if stats is not None:
        prepend_standardization(model, *stats, list(bundle.manifest.input.sample_shape))
        model.doc_string += "; input standardized inside (takes raw features)"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def prepend_standardization(
    model, mean: list[float], std: list[float], sample_shape: list[int]
) -> None:
    """Make ``model``'s first input take raw features: ``Sub`` the run's mean and ``Div`` by
    its std (float32, shaped like one sample so they broadcast over the batch) before every
    node that read the input."""
    from onnx import helper, numpy_helper

    graph = model.graph
    raw = graph.input[0].name
    inner = f"{raw}__standardized"
    if any(i.name == f"{raw}__mean" for i in graph.initializer):
        raise ModelExportError("the inference graph is already standardized")
    if int(np.prod(sample_shape)) != len(mean):
        raise ModelExportError(
            f"the run's statistics cover {len(mean)} features, the model's input {sample_shape}"
        )
    for node in graph.node:
        node.input[:] = [inner if name == raw else name for name in node.input]
    for out in graph.output:  # an identity model: its output was the input itself
        if out.name == raw:
            raise ModelExportError("the inference graph returns its input unchanged")
    shape = list(sample_shape)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.asarray(mean, np.float32).reshape(shape), f"{raw}__mean"),
            numpy_helper.from_array(np.asarray(std, np.float32).reshape(shape), f"{raw}__std"),
        ]
    )
    steps = [
        helper.make_node(
            "Sub", [raw, f"{raw}__mean"], [f"{raw}__centred"], "fedge_standardize_sub"
        ),
        helper.make_node(
            "Div", [f"{raw}__centred", f"{raw}__std"], [inner], "fedge_standardize_div"
        ),
    ]
    for i, node in enumerate(steps):
        graph.node.insert(i, node)

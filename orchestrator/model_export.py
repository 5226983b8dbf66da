"""Export a stored model version as a standalone inference ONNX file.

The bundle's ``inference.onnx`` gets that version's parameters as its initializers. Rewriting
initializers needs the ``onnx`` package (``pip install onnx==1.17.0``; it is part of
``fedge[exporter]``); everything else here is plain numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedge.protocol.bundle import Bundle
from fedge.protocol.errors import FedgeError
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
    model = onnx.load(str(bundle.file("inference.onnx")))
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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out

"""Forward passes on a bundle's inference model with given parameters (plain onnxruntime)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedge.protocol.bundle import Bundle
from fedge.protocol.ort_runtime import import_onnxruntime, single_thread_session_options
from fedge.protocol.sqlite_samples import DataError, Features, input_arrays


class InferenceRunner:
    """``inference.onnx`` with its initializers replaced by ``params`` (by name)."""

    def __init__(self, bundle: Bundle, params: dict[str, np.ndarray], *, threads: int = 1) -> None:
        ort = import_onnxruntime()
        so = single_thread_session_options(ort, threads)
        # Graph optimizations (Conv+BatchNorm fusion, weight re-packing) read the exported
        # weights before add_initializer's replacements apply: a CNN would be scored with its
        # starting weights. Unoptimized is slower but right.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # add_initializer keeps a reference, not a copy: hold the OrtValues as long as the session.
        self._values: list[Any] = []
        for name, value in params.items():
            ov = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
            self._values.append(ov)
            so.add_initializer(name, ov)
        self._session = ort.InferenceSession(
            str(bundle.file("inference.onnx")), sess_options=so, providers=["CPUExecutionProvider"]
        )
        # the model's inputs, in graph order (token ids and a mask: two); parameters are
        # overridable initializers, which get_inputs() leaves out
        self._inputs = [
            (i.name, _ORT_TYPES.get(i.type, np.float32))  # Embedding models take int64
            for i in self._session.get_inputs()
        ]

    def run(self, x: Features) -> np.ndarray:
        """Outputs for ``x``: one array, or one per model input in the graph's order."""
        arrays = input_arrays(x)
        if len(arrays) != len(self._inputs):
            names = ", ".join(n for n, _ in self._inputs)
            raise DataError(
                f"the model takes {len(self._inputs)} inputs ({names}), got {len(arrays)}"
            )
        feeds = {
            name: np.ascontiguousarray(a, dtype=dtype)
            for (name, dtype), a in zip(self._inputs, arrays, strict=True)
        }
        out: np.ndarray = self._session.run(None, feeds)[0]
        return out


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
}

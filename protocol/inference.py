"""Forward passes on a bundle's inference model with given parameters (plain onnxruntime)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedge.protocol.bundle import Bundle
from fedge.protocol.ort_runtime import import_onnxruntime, single_thread_session_options


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
        first = self._session.get_inputs()[0]
        self._input = first.name
        self._dtype = _ORT_TYPES.get(first.type, np.float32)  # Embedding models take int64

    def run(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._session.run(
            None, {self._input: np.ascontiguousarray(x, dtype=self._dtype)}
        )[0]
        return out


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
}

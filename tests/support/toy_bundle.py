"""A toy bundle for tests that need a valid manifest but no real model (no torch, no ONNX)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedge.protocol.bundle import write_manifest
from fedge.protocol.manifest import REQUIRED_FILES
from fedge.protocol.tensors import encode_tensors

PARAMS = {
    "fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
    "fc.bias": np.zeros(2, dtype=np.float32),
}


def toy_manifest() -> dict:
    """A format-2 manifest (without files and hash) for PARAMS: fc.weight trains, fc.bias is
    frozen."""
    return {
        "format_version": 2,
        "model_name": "toy",
        "inputs": [{"name": "input", "dtype": "float32", "shape": [None, 3]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [None, 2]}],
        "label": {"name": "labels", "dtype": "int64", "shape": [None]},
        "loss": {"type": "cross_entropy", "reduction": "mean"},
        "optimizers": [{"type": "sgd", "lr": 0.1, "hyperparameters": {}}],
        "task": {"kind": "multiclass", "num_classes": 2},
        "parameters": [
            {"name": "fc.weight", "shape": [2, 3], "dtype": "float32", "trainable": True},
            {"name": "fc.bias", "shape": [2], "dtype": "float32", "trainable": False},
        ],
        "opset": 17,
        "ir_version": 8,
        "versions": {"fedge": "0.1.0"},
        "backends": ["ort-training"],
        "verification": {"forward_max_abs_diff": 0.0},
        "patches": [],
        "running_stats": [],
    }


def write_toy_bundle(root: Path) -> Path:
    """Fake model files, PARAMS and a valid manifest in a new folder ``root``."""
    root.mkdir()
    for name in REQUIRED_FILES:
        (root / name).write_bytes(f"fake {name}".encode())
    (root / "parameters.safetensors").write_bytes(encode_tensors(PARAMS))
    write_manifest(root, toy_manifest())
    return root

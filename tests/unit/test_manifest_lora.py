"""The manifest's ``lora`` section: parsed and checked against the parameter table; merging
adapters gives W + alpha/rank * B @ A under the plain model's names."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from support.toy_bundle import toy_manifest

from fedge.protocol.errors import BundleError
from fedge.protocol.manifest import Manifest
from fedge.protocol.manifest_lora import merge_parameters


def _lora_manifest() -> dict:
    """fc (3 -> 2) wrapped with a rank-1 adapter; fc.bias frozen."""
    m = toy_manifest()
    m["parameters"] = [
        {"name": "fc.base_weight", "shape": [2, 3], "dtype": "float32", "trainable": False},
        {"name": "fc.bias", "shape": [2], "dtype": "float32", "trainable": False},
        {"name": "fc.lora_A", "shape": [1, 3], "dtype": "float32", "trainable": True},
        {"name": "fc.lora_B", "shape": [2, 1], "dtype": "float32", "trainable": True},
    ]
    m["lora"] = {
        "rank": 1,
        "alpha": 2.0,
        "seed": 0,
        "targets": ["fc"],
        "adapters": [
            {
                "module": "fc",
                "base": "fc.base_weight",
                "merged": "fc.weight",
                "lora_a": "fc.lora_A",
                "lora_b": "fc.lora_B",
            }
        ],
        "merged_inference": "inference_merged.onnx",
    }
    return m


def test_round_trip_and_merge() -> None:
    manifest = Manifest.from_dict(_lora_manifest(), draft=True)
    assert manifest.lora is not None and manifest.lora.scale == 2.0
    body = {k: v for k, v in manifest.to_dict().items() if k not in ("files", "content_hash")}
    assert Manifest.from_dict(body, draft=True).lora == manifest.lora
    params = {
        "fc.base_weight": np.ones((2, 3), np.float32),
        "fc.bias": np.array([0.5, -0.5], np.float32),
        "fc.lora_A": np.array([[1.0, 2.0, 3.0]], np.float32),
        "fc.lora_B": np.array([[1.0], [-1.0]], np.float32),
    }
    merged = merge_parameters(manifest.lora, params)
    assert sorted(merged) == ["fc.bias", "fc.weight"]
    want = np.ones((2, 3)) + 2.0 * np.array([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]])
    np.testing.assert_allclose(merged["fc.weight"], want)
    assert merged["fc.weight"].dtype == np.float32


def test_a_bundle_without_lora_keeps_its_layout() -> None:
    assert "lora" not in Manifest.from_dict(toy_manifest(), draft=True).to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["parameters"][0].update(trainable=True), "base weight must be frozen"),
        (lambda m: m["parameters"][2].update(shape=[2, 3]), "do not fit rank 1"),
        (lambda m: m["lora"]["adapters"][0].update(lora_b="fc.nope"), "'parameters' lacks"),
        (lambda m: m["lora"].update(rank=0), "'lora.rank' must be >= 1"),
        (lambda m: m["lora"].update(alpha=-1), "'lora.alpha' must be a positive number"),
        (lambda m: m["lora"].update(extra=1), "'lora' has unknown field"),
    ],
)
def test_an_inconsistent_lora_section_is_refused(change, message: str) -> None:
    m = copy.deepcopy(_lora_manifest())
    change(m)
    with pytest.raises(BundleError, match=message):
        Manifest.from_dict(m, draft=True)


def test_a_complete_manifest_must_list_the_merged_graph() -> None:
    m = _lora_manifest()
    m["files"] = {
        name: {"sha256": "0" * 64, "size": 1}
        for name in (
            "training_model.onnx",
            "eval_model.onnx",
            "optimizer_model.onnx",
            "checkpoint",
            "inference.onnx",
            "parameters.safetensors",
        )
    }
    m["content_hash"] = "0" * 64
    with pytest.raises(BundleError, match="'inference_merged.onnx', which 'files' does not list"):
        Manifest.from_dict(m)

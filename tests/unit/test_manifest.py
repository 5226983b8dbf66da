"""The typed manifest: one parser, one writer, format-1 bundles upgraded on load."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.toy_bundle import PARAMS, toy_manifest, write_toy_bundle

from fedge.protocol.bundle import load_bundle, pack_bundle, unpack_bundle, write_manifest
from fedge.protocol.errors import BundleError
from fedge.protocol.manifest import (
    FORMAT_VERSION,
    REQUIRED_FILES,
    Manifest,
    OptimizerSpec,
    TaskSpec,
    TensorSpec,
    compute_content_hash,
    manifest_bytes,
    parse_manifest,
)
from fedge.protocol.tensors import encode_tensors


def _complete(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with plausible files and its content hash: a manifest the parser accepts."""
    out = copy.deepcopy(body)
    out["files"] = {n: {"sha256": "0" * 64, "size": 1} for n in REQUIRED_FILES}
    out["content_hash"] = compute_content_hash(out)
    return out


def test_round_trip_is_exact() -> None:
    body = _complete(toy_manifest())
    m = Manifest.from_dict(body)
    assert m.to_dict() == body
    assert m.task == TaskSpec("multiclass", num_classes=2)
    assert m.input == TensorSpec("input", "float32", (None, 3))
    assert m.input.sample_shape == (3,)
    assert m.optimizers == (OptimizerSpec("sgd", 0.1, {}),) and m.optimizer.lr == 0.1
    assert m.trainable_names == ["fc.weight"] and m.frozen_names == ["fc.bias"]
    assert parse_manifest(manifest_bytes(body)) == m
    assert compute_content_hash(m.to_dict()) == m.content_hash


def _broken(edit: Any) -> dict[str, Any]:
    body = toy_manifest()
    edit(body)
    return _complete(body)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m.pop("model_name"), "'model_name'"),
        (lambda m: m["task"].update(kind="ranking"), "'task.kind'"),
        (lambda m: m["task"].update(num_classes=3), "'task' says 3 classes"),
        (lambda m: m.update(task={"kind": "regression", "num_targets": 2}), "'task.kind'"),
        (lambda m: m["inputs"][0].update(dtype="complex64"), "'inputs[0].dtype'"),
        (lambda m: m["inputs"][0].update(shape=[4, 3]), "'inputs[0].shape'"),
        (lambda m: m["label"].update(dtype="float32"), "int64 class ids"),
        (lambda m: m["loss"].update(type="hinge"), "'loss.type'"),
        (lambda m: m["optimizers"][0].update(lr=-1), "'optimizers[0].lr'"),
        (lambda m: m["optimizers"][0]["hyperparameters"].update(eps="x"), "hyperparameters.eps"),
        (lambda m: m["optimizers"].append(m["optimizers"][0]), "lists 'sgd' twice"),
        (
            lambda m: m["optimizers"].append({"type": "adamw", "lr": 0.1, "hyperparameters": {}}),
            "each needs its 'files'",
        ),
        (
            lambda m: m["optimizers"][0].update(files={"tflite": "x.onnx"}),
            "'optimizers[0].files.tflite' names backend 'tflite'",
        ),
        (
            lambda m: m["optimizers"][0].update(files={"ort-training": "../x"}),
            "must be a bundle file name",
        ),
        (
            lambda m: m["optimizers"][0].update(files={"ort-training": "missing.onnx"}),
            "names 'missing.onnx', which 'files' does not list",
        ),
        (lambda m: m["parameters"][0].update(trainable="yes"), "'parameters[0].trainable'"),
        (lambda m: m["parameters"][1].update(name="fc.weight"), "twice"),
        (lambda m: m.update(backends=["ort-gpu"]), "'backends'"),
        (lambda m: m.update(backends=["ort-training", "ort-portable"]), "portable step"),
        (lambda m: m.update(running_stats=[{"param": "fc.weight", "output": "o"}]), "frozen"),
        (lambda m: m.update(surprise=1), "unknown field(s) ['surprise']"),
        (lambda m: m["loss"].update(extra=1), "'loss' has unknown field(s) ['extra']"),
        (lambda m: m.update(portable={"available": True}), "'portable.inputs'"),
    ],
)
def test_parser_names_the_field(edit: Any, field: str) -> None:
    with pytest.raises(BundleError) as err:
        Manifest.from_dict(_broken(edit))
    assert field in str(err.value)


def test_files_and_hash_are_required_outside_drafts() -> None:
    with pytest.raises(BundleError, match="'files'"):
        Manifest.from_dict(toy_manifest())
    draft = Manifest.from_dict(toy_manifest(), draft=True)
    assert draft.files == {} and draft.content_hash == ""


@pytest.mark.parametrize(
    ("loss", "shape", "want"),
    [
        ("cross_entropy", (10,), TaskSpec("multiclass", num_classes=10)),
        ("bce_with_logits", (1,), TaskSpec("binary")),
        ("bce_with_logits", (), TaskSpec("binary")),
        ("bce_with_logits", (5,), TaskSpec("multilabel", num_labels=5)),
        ("mse", (1,), TaskSpec("regression", num_targets=1)),
        ("l1", (3,), TaskSpec("regression", num_targets=3)),
        ("custom", (4,), TaskSpec("regression", num_targets=4)),
    ],
)
def test_task_is_derived_from_loss_and_output(loss: str, shape: tuple, want: TaskSpec) -> None:
    assert TaskSpec.derive(loss, shape) == want


def test_custom_loss_with_classes_is_multiclass() -> None:
    assert TaskSpec.derive("custom", (4,), num_classes=4) == TaskSpec("multiclass", num_classes=4)


# ---- format 1: the layout fedge wrote before the typed manifest (git show main:exporter/export.py)


def _format1(**changes: Any) -> dict[str, Any]:
    old = {
        "format_version": 1,
        "model_name": "toy",
        "inputs": [{"name": "input", "dtype": "float32", "shape": [None, 3]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [None, 2]}],
        "label": {"name": "labels", "dtype": "int64", "shape": [None]},
        "loss": {"type": "cross_entropy", "reduction": "mean"},
        "optimizer": {
            "type": "adamw",
            "lr": 0.01,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "weight_decay": 0.01,
            "bias_correction": True,
        },
        "task": "classification",
        "num_classes": 2,
        "parameters": [
            {"name": "fc.weight", "shape": [2, 3], "dtype": "float32", "trainable": True},
            {"name": "fc.bias", "shape": [2], "dtype": "float32", "trainable": False},
        ],
        "opset": 17,
        "ir_version": 8,
        "versions": {"fedge": "0.1.0", "torch": "2.4.1"},
        "backends": ["ort-training"],
        "verification": {"forward_max_abs_diff": 1e-7, "step_max_abs_diff": 2e-8},
        "patches": [{"what": "optimizer_model.onnx: adam_mode 1 -> 0", "why": "torch's AdamW"}],
        "portable": {"available": False, "reason": "a custom onnxblock loss has no portable step"},
    }
    old.update(changes)
    return old


def _write_format1(root: Path, old: dict[str, Any]) -> str:
    """A bundle directory exactly as the format-1 writer left it; returns its content hash."""
    root.mkdir()
    for name in REQUIRED_FILES:
        (root / name).write_bytes(f"fake {name}".encode())
    (root / "parameters.safetensors").write_bytes(encode_tensors(PARAMS))
    old["files"] = {
        p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
        for p in sorted(root.iterdir())
    }
    old["content_hash"] = compute_content_hash(old)
    (root / "manifest.json").write_bytes(manifest_bytes(old))
    return old["content_hash"]


def test_format1_bundle_loads_as_typed_manifest(tmp_path: Path) -> None:
    content_hash = _write_format1(tmp_path / "old", _format1())
    bundle = load_bundle(tmp_path / "old")
    m = bundle.manifest
    assert bundle.content_hash == content_hash  # the model's identity does not change
    assert m.source_format == 1 and m.format_version == FORMAT_VERSION == 2
    assert m.task == TaskSpec("multiclass", num_classes=2)
    assert m.optimizer.type == "adamw" and m.optimizer.lr == 0.01
    assert m.optimizer.hyperparameters["betas"] == (0.9, 0.999)
    assert m.optimizer.hyperparameters["bias_correction"] is True
    assert m.portable is not None and not m.portable.available
    assert m.verification.step_max_abs_diff == 2e-8
    np.testing.assert_array_equal(bundle.initial_parameters()["fc.weight"], PARAMS["fc.weight"])
    # archives of format-1 bundles unpack and load too
    out = unpack_bundle(pack_bundle(tmp_path / "old"), tmp_path / "unpacked")
    assert load_bundle(out).content_hash == content_hash


@pytest.mark.parametrize(
    ("changes", "want"),
    [
        (  # one logit: the old exporter wrote num_classes 2
            {
                "loss": {"type": "bce_with_logits", "reduction": "mean"},
                "outputs": [{"name": "logits", "dtype": "float32", "shape": [None, 1]}],
                "label": {"name": "target", "dtype": "float32", "shape": [None, 1]},
            },
            TaskSpec("binary"),
        ),
        (
            {
                "loss": {"type": "bce_with_logits", "reduction": "mean"},
                "label": {"name": "target", "dtype": "float32", "shape": [None, 2]},
            },
            TaskSpec("multilabel", num_labels=2),
        ),
        (
            {
                "task": "regression",
                "num_classes": None,
                "loss": {"type": "mse", "reduction": "mean"},
                "outputs": [{"name": "prediction", "dtype": "float32", "shape": [None, 2]}],
                "label": {"name": "target", "dtype": "float32", "shape": [None, 2]},
            },
            TaskSpec("regression", num_targets=2),
        ),
    ],
)
def test_format1_task_is_mapped_to_a_kind(changes: dict, want: TaskSpec) -> None:
    old = _format1(**changes)
    if old["num_classes"] is None:
        del old["num_classes"]
    assert Manifest.from_dict(_complete(old)).task == want


def test_format1_portable_section_drops_its_optimizer_copy(tmp_path: Path) -> None:
    portable = {
        "available": True,
        "file": "portable_step.onnx",
        "buffers_file": None,
        "state": [
            {
                "name": "fc.weight",
                "kind": "parameter",
                "shape": [2, 3],
                "dtype": "float32",
                "output": "new.fc.weight",
            },
        ],
        "inputs": {"input": "input", "label": "labels", "lr": "lr"},
        "outputs": ["loss", "new.fc.weight"],
        "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
        "dynamic_batch": True,
        "opset": 17,
        "ir_version": 8,
    }
    old = _format1(portable=portable, backends=["ort-training", "ort-portable"])
    old = _complete(old)
    old["files"]["portable_step.onnx"] = {"sha256": "1" * 64, "size": 3}
    m = Manifest.from_dict(old)
    assert m.portable_available and m.portable.state[0].output == "new.fc.weight"
    assert "optimizer" not in m.to_dict()["portable"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "classification", "loss": {"type": "mse"}}, "re-export"),
        ({"task": "regression", "loss": {"type": "cross_entropy"}}, "re-export"),
        ({"num_classes": None}, "needs 'num_classes' >= 2"),
        ({"task": "segmentation"}, "format-1 manifest field 'task'"),
        ({"outputs": [{"name": "o", "dtype": "float32"}]}, "outputs[0].shape"),
    ],
)
def test_format1_refused_where_the_task_cannot_be_told(changes: dict, message: str) -> None:
    with pytest.raises(BundleError) as err:
        Manifest.from_dict(_complete(_format1(**changes)))
    assert message in str(err.value)


def test_writer_upgrades_a_format1_dict_to_format2(tmp_path: Path) -> None:
    root = write_toy_bundle(tmp_path / "b")
    old = _format1()
    written = write_manifest(root, old)
    raw = json.loads((root / "manifest.json").read_text())
    assert raw["format_version"] == 2 and raw == written.to_dict()
    assert load_bundle(root).manifest == written


def test_unknown_future_format_is_refused() -> None:
    with pytest.raises(BundleError, match="unknown bundle format version 3"):
        Manifest.from_dict({**toy_manifest(), "format_version": 3})


def test_inspect_summarizes_a_format1_bundle(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fedge.exporter.cli import _print_summary

    _write_format1(tmp_path / "old", _format1())
    _print_summary(load_bundle(tmp_path / "old"), tmp_path / "old", details=True)
    out = capsys.readouterr().out
    assert "model:         toy (multiclass, 2 classes)" in out
    assert (
        "optimizer:     adamw (betas=[0.9, 0.999], bias_correction=True, eps=1e-08, lr=0.01" in out
    )
    assert "format:        2, read from format 1 (opset 17, IR 8" in out
    assert "no (BatchNorm running stat)" not in out and "fc.bias" in out


def _two_optimizers() -> Manifest:
    body = toy_manifest()
    body["optimizers"] = [
        {"type": "adamw", "lr": 0.01, "hyperparameters": {"weight_decay": 0.01},
         "files": {"ort-training": "optimizer_model.onnx"}},
        {"type": "sgd", "lr": 0.01, "hyperparameters": {"weight_decay": 0.0},
         "files": {"ort-training": "optimizer_model_sgd.onnx"}},
    ]  # fmt: skip
    out = _complete(body)
    out["files"]["optimizer_model_sgd.onnx"] = {"sha256": "0" * 64, "size": 1}
    out["content_hash"] = compute_content_hash(out)
    return Manifest.from_dict(out)


def test_a_bundle_carries_several_optimizers_each_with_its_files() -> None:
    m = _two_optimizers()
    assert m.optimizer_types == ("adamw", "sgd") and m.optimizer.type == "adamw"
    assert m.optimizer_named("").type == "adamw"  # "" = the default, the first
    sgd = m.optimizer_named("sgd")
    assert m.optimizer_file(sgd, "ort-training") == "optimizer_model_sgd.onnx"
    assert Manifest.from_dict(m.to_dict()) == m
    with pytest.raises(BundleError, match="bundle 'toy' carries adamw, sgd; got 'adam'"):
        m.optimizer_named("adam")
    with pytest.raises(BundleError, match="no ort-portable file for optimizer 'sgd'"):
        m.optimizer_file(sgd, "ort-portable")


def test_a_single_optimizer_bundle_keeps_the_old_file_names() -> None:
    m = Manifest.from_dict(_complete(toy_manifest()))
    assert "files" not in m.to_dict()["optimizers"][0]  # its content hash is unchanged
    assert m.optimizer_file(m.optimizer, "ort-training") == "optimizer_model.onnx"
    with pytest.raises(BundleError, match="carries sgd; got 'adamw'"):
        m.optimizer_named("adamw")


def test_one_weight_decay_rule_for_the_orchestrator_and_the_agent():
    from fedge.protocol.manifest import OptimizerSpec

    sgd = OptimizerSpec("sgd", 0.05, {"weight_decay": 0.0})
    adamw = OptimizerSpec("adamw", 0.01, {"weight_decay": 0.01})
    assert sgd.weight_decay_refusal(0.0) is None
    assert adamw.weight_decay_refusal(0.5) is None
    refusal = sgd.weight_decay_refusal(0.1)
    assert refusal is not None and "neither weight decay nor momentum" in refusal

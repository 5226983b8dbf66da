"""Exporter end to end: real torch -> ONNX -> ORT training artifacts, checked numerically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedge.demo.models import digits_mlp
from fedge.exporter.errors import ExportError
from fedge.exporter.export import export_bundle
from fedge.protocol import signing
from fedge.protocol.bundle import load_bundle
from fedge.protocol.manifest import TaskSpec, TensorSpec
from fedge.protocol.ort_runtime import import_training_api, single_thread_session_options

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        opt: export_bundle(
            digits_mlp(),
            input_shape=(64,),
            optimizer=opt,
            lr=0.01,
            out_dir=root / opt,
            model_name="digits",
        )
        for opt in ("sgd", "adamw")
    }


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_export_parity_recorded(exported: dict[str, Path], opt: str) -> None:
    bundle = load_bundle(exported[opt])
    m = bundle.manifest
    ver = m.verification
    assert ver.forward_max_abs_diff < 1e-5
    assert ver.step_max_abs_diff < 1e-6
    assert ver.values["frozen_max_change"] == 0.0
    assert [o.type for o in m.optimizers] == [opt] and m.optimizer.lr == 0.01
    assert m.task == TaskSpec("multiclass", num_classes=10)
    assert m.label == TensorSpec("labels", "int64", (None,))
    assert m.inputs == (TensorSpec("input", "float32", (None, 64)),)
    assert [p.name for p in m.parameters] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert bundle.trainable_names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert m.ir_version <= 10
    if opt == "adamw":
        assert "adam_mode 1 -> 0" in m.patches[0].what
        assert m.optimizer.hyperparameters["betas"] == (0.9, 0.999)
    else:
        assert m.patches == ()
    raw = json.loads((exported[opt] / "manifest.json").read_text())
    assert raw["format_version"] == 2 and raw == m.to_dict()  # the one writer wrote it
    params = bundle.initial_parameters()
    torch_params = dict(digits_mlp().named_parameters())
    for name, value in params.items():
        np.testing.assert_array_equal(value, torch_params[name].detach().numpy())


def test_inference_model_accepts_parameter_overrides(exported: dict[str, Path]) -> None:
    ort = import_training_api() and __import__("onnxruntime")
    bundle = load_bundle(exported["sgd"])
    x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    so = single_thread_session_options(ort)
    zeros = {
        n: np.zeros(s.shape, np.float32) for n, s in ((s.name, s) for s in bundle.parameter_specs)
    }
    values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in zeros.items()}
    for name, value in values.items():
        so.add_initializer(name, value)
    sess = ort.InferenceSession(
        str(bundle.file("inference.onnx")), so, providers=["CPUExecutionProvider"]
    )
    (out,) = sess.run(None, {"input": x})
    assert out.shape == (3, 10) and np.all(out == 0)


def test_same_model_twice_same_content_hash(exported: dict[str, Path], tmp_path: Path) -> None:
    again = export_bundle(
        digits_mlp(),
        input_shape=(64,),
        optimizer="adamw",
        lr=0.01,
        out_dir=tmp_path / "again",
        model_name="digits",
    )
    first, second = load_bundle(exported["adamw"]), load_bundle(again)
    assert first.manifest.files == second.manifest.files
    assert first.content_hash == second.content_hash
    other = export_bundle(
        digits_mlp(hidden=32),
        input_shape=(64,),
        optimizer="adamw",
        lr=0.01,
        out_dir=tmp_path / "other",
        model_name="digits",
    )
    assert load_bundle(other).content_hash != first.content_hash


def test_archive_and_signature(tmp_path: Path) -> None:
    priv, pub = signing.write_keypair(tmp_path / "keys")
    path = export_bundle(
        digits_mlp(hidden=16),
        input_shape=(64,),
        optimizer="sgd",
        out_dir=tmp_path / "d.fedge",
        sign_key=priv,
        verify=False,
    )
    assert path.is_file() and path.suffix == ".fedge"
    bundle = load_bundle(
        path,
        trusted_public_keys=[pub.read_bytes()],
        require_signature=True,
        extract_to=tmp_path / "x",
    )
    assert bundle.signature_status.startswith("verified:")
    assert bundle.manifest.verification.skipped is True


def test_frozen_glob_stays_fixed_in_ort(tmp_path: Path) -> None:
    path = export_bundle(
        digits_mlp(hidden=16),
        input_shape=(64,),
        optimizer="adamw",
        lr=0.1,
        frozen=["0.*"],
        out_dir=tmp_path / "frozen",
    )
    bundle = load_bundle(path)
    assert bundle.trainable_names == ["2.weight", "2.bias"]
    assert {p.name for p in bundle.parameter_specs if not p.trainable} == {"0.weight", "0.bias"}
    assert bundle.manifest.verification.values["frozen_max_change"] == 0.0
    # one ORT training step by hand: frozen parameters unchanged, trainable ones moved
    ort = __import__("onnxruntime")
    api = import_training_api()
    state = api.CheckpointState.load_checkpoint(str(bundle.file("checkpoint")))
    module = api.Module(
        str(bundle.file("training_model.onnx")),
        state,
        str(bundle.file("eval_model.onnx")),
        device="cpu",
        session_options=single_thread_session_options(ort),
    )
    opt = api.Optimizer(str(bundle.file("optimizer_model.onnx")), module)
    before = {n: p.data.copy() for n, p in state.parameters}
    module.train()
    rng = np.random.default_rng(1)
    module(rng.normal(size=(4, 64)).astype(np.float32), rng.integers(0, 10, 4).astype(np.int64))
    opt.step()
    after = {n: p.data.copy() for n, p in state.parameters}
    for name in ("0.weight", "0.bias"):
        np.testing.assert_array_equal(before[name], after[name])
    assert not np.array_equal(before["2.weight"], after["2.weight"])


def test_unknown_glob_lists_parameters(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"'encoder\.\*' matches no parameter.*0\.weight"):
        export_bundle(digits_mlp(), input_shape=(64,), frozen=["encoder.*"], out_dir=tmp_path / "g")


def test_freezing_everything_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no parameter is left trainable"):
        export_bundle(digits_mlp(), input_shape=(64,), frozen=["*"], out_dir=tmp_path / "g")


def test_wrong_input_shape_reports_torch_message(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"does not run on an input of shape \(8, 32\).*mat1"):
        export_bundle(digits_mlp(), input_shape=(32,), out_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_rnn_refused_with_module_path(tmp_path: Path) -> None:
    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.RNN(4, 8, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(x)[0][:, -1])

    with pytest.raises(ExportError, match="'encoder'.*nn.RNN has no gradient builder.*nn.GRU"):
        export_bundle(Seq(), input_shape=(5, 4), out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_bias_before_batchnorm_is_reported_not_compared_under_adamw(tmp_path: Path) -> None:
    """A bias feeding BatchNorm has an exactly-zero gradient: Adam turns rounding noise into a
    full step, so it is listed in the manifest instead of failing the step comparison."""
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    ver = load_bundle(
        export_bundle(bn, input_shape=(4,), out_dir=tmp_path / "b", portable=False)
    ).manifest.verification
    assert ver.values["zero_gradient_parameters"] == ["0.bias"]
    assert ver.step_max_abs_diff < 1e-4 and ver.values["running_stats_max_abs_diff"] < 1e-5


def test_regression_mse(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    path = export_bundle(
        model, input_shape=(5,), loss="mse", optimizer="sgd", lr=0.05, out_dir=tmp_path / "reg"
    )
    m = json.loads((path / "manifest.json").read_text())
    assert m["task"] == {"kind": "regression", "num_targets": 1} and "num_classes" not in m
    assert m["label"] == {"name": "target", "dtype": "float32", "shape": [None, 1]}
    assert m["verification"]["step_max_abs_diff"] < 1e-6


def test_existing_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ExportError, match="not an empty directory"):
        export_bundle(digits_mlp(), input_shape=(64,), out_dir=tmp_path / "full")

"""Losses: the four built in, a custom onnxblock loss, and wrong loss/label combinations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from zoo.losses import SmoothL1Loss
from zoo.models import ZOO

from fedge.exporter.errors import ExportError
from fedge.exporter.export import export_bundle
from fedge.protocol.bundle import load_bundle

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small models on a shared 2-core machine: torch's thread pool costs ~7x (bench)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_custom_onnxblock_loss_matches_torch(tmp_path: Path) -> None:
    path = export_bundle(
        ZOO["regressor_mse"].build(),
        input_shape=(8,),
        loss=SmoothL1Loss(),
        torch_loss=nn.SmoothL1Loss(),
        optimizer="sgd",
        lr=0.1,
        out_dir=tmp_path / "huber",
    )
    m = load_bundle(path).manifest
    assert m.loss.to_dict() == {"type": "custom", "block": "SmoothL1Loss"}
    assert m.label.to_dict() == {"name": "target", "dtype": "float32", "shape": [None, 2]}
    assert m.task.kind == "regression"
    assert m.verification.step_max_abs_diff < 1e-6
    assert m.verification.values["loss_abs_diff"] < 1e-6
    assert m.backends == ("ort-training",) and not m.portable_available


def test_custom_loss_without_torch_twin_skips_the_step_check(tmp_path: Path) -> None:
    path = export_bundle(
        ZOO["regressor_mse"].build(),
        input_shape=(8,),
        loss=SmoothL1Loss(),
        out_dir=tmp_path / "huber",
    )
    ver = load_bundle(path).manifest.verification
    assert ver.step_max_abs_diff is None and "torch_loss" in ver.step_skipped


@pytest.mark.parametrize(
    ("loss", "kwargs", "message"),
    [
        ("cross_entropy", {"label_dtype": "float32"}, "cross_entropy needs int64 labels"),
        ("mse", {"label_dtype": "int64"}, "loss mse needs float32 labels"),
        ("bce_with_logits", {"label_shape": (3,)}, r"needs labels of shape \(4,\)"),
        ("cross_entropy", {"num_classes": 7}, "--num-classes 7 but the model outputs 4"),
        ("hinge", {}, r"unknown loss 'hinge'; choose one of \['cross_entropy'"),
        (42, {}, "loss must be one of .* not int"),
    ],
)
def test_wrong_loss_label_combination(
    loss: object, kwargs: dict, message: str, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    with pytest.raises(ExportError, match=message):
        export_bundle(ZOO["mlp"].build(), input_shape=(16,), loss=loss, out_dir=out, **kwargs)
    assert not out.exists()


def test_cross_entropy_on_a_single_output_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"cross_entropy needs \(batch, classes\) logits"):
        export_bundle(ZOO["binary_bce"].build(), input_shape=(8,), out_dir=tmp_path / "b")

"""The model zoo exported end to end, each model's parity with PyTorch asserted and recorded.

The portable step (exporter/portable, tested with its own suite) is left out here to keep
this file fast: these tests are about the ort-training artifacts.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from zoo.models import UNSUPPORTED, ZOO

from fedge.exporter.errors import ExportError
from fedge.exporter.export import export_bundle
from fedge.exporter.verify import write_back_running_stats
from fedge.protocol.bundle import load_bundle
from fedge.protocol.inference import InferenceRunner
from fedge.protocol.ort_runtime import import_training_api, single_thread_session_options

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small models on a shared 2-core machine: torch's thread pool costs ~7x (bench)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TOLERANCE = 1e-4
# AdamW for every model; SGD too where it exercises a different optimizer graph per layer kind.
CASES = [(name, "adamw") for name in ZOO] + [
    (name, "sgd") for name in ("mlp", "mobilenet_block", "lstm", "embedding")
]


def _export(name: str, optimizer: str, out: Path) -> Path:
    z = ZOO[name]
    return export_bundle(
        z.build(),
        input_shape=z.input_shape,
        input_dtype=z.input_dtype,
        loss=z.loss,
        optimizer=optimizer,
        lr=0.05,
        out_dir=out,
        model_name=name,
        portable=False,
        **z.options,
    )


@pytest.mark.parametrize(("name", "optimizer"), CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_zoo_model_parity(name: str, optimizer: str, tmp_path: Path) -> None:
    bundle = load_bundle(_export(name, optimizer, tmp_path / name))
    m = bundle.manifest
    ver = m.verification.values
    assert ver["forward_max_abs_diff"] < TOLERANCE
    assert ver["forward_tolerance"] == ver["step_tolerance"] == TOLERANCE
    if ZOO[name].note.startswith("p=0.3"):
        assert ver["step_max_abs_diff"] is None and "dropout" in ver["step_skipped"]
    else:
        assert ver["step_max_abs_diff"] < TOLERANCE
        assert ver["loss_abs_diff"] < 1e-5
        assert ver["frozen_max_change"] == 0.0
    assert m.optimizer.type == optimizer and m.loss.type == ZOO[name].loss
    bn_stats = [p.name for p in m.parameters if p.name.endswith(("_mean", "_var"))]
    if bn_stats:
        assert [s.param for s in m.running_stats] == bn_stats
        assert all(not p.trainable for p in m.parameters if p.name in bn_stats)
        assert ver["running_stats_max_abs_diff"] < 1e-5
        assert ver["running_stats_max_change"] > 1e-3  # the statistics really trained
        assert any("BatchNorm" in p.what for p in m.patches)
    else:
        assert m.running_stats == ()


def test_unsupported_layer_refused_before_any_file(tmp_path: Path) -> None:
    out = tmp_path / "rnn"
    with pytest.raises(ExportError, match=r"module 'rnn' \(RNN\).*use nn.GRU or nn.LSTM"):
        export_bundle(UNSUPPORTED["plain_rnn"](), input_shape=(5, 4), out_dir=out)
    assert not out.exists()


def test_batchnorm_cumulative_average_refused(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, momentum=None), nn.Linear(4, 2))
    with pytest.raises(ExportError, match=r"module '1' \(BatchNorm1d\): momentum=None"):
        export_bundle(model, input_shape=(4,), out_dir=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_batchnorm_trains_like_torch_over_steps_and_evaluates_on_running_stats(
    tmp_path: Path,
) -> None:
    """Three ORT steps with the manifest's write-back contract vs three torch steps; then eval."""
    z = ZOO["mobilenet_block"]
    model = z.build()
    bundle = load_bundle(_export("mobilenet_block", "sgd", tmp_path / "bn"))
    api = import_training_api(block_torch=False)
    ort = __import__("onnxruntime")
    state = api.CheckpointState.load_checkpoint(str(bundle.file("checkpoint")))
    module = api.Module(
        str(bundle.file("training_model.onnx")),
        state,
        str(bundle.file("eval_model.onnx")),
        device="cpu",
        session_options=single_thread_session_options(ort),
    )
    opt = api.Optimizer(str(bundle.file("optimizer_model.onnx")), module)
    opt.set_learning_rate(0.05)
    clone = copy.deepcopy(model).train()
    torch_opt = torch.optim.SGD(clone.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        x = torch.randn((6, *z.input_shape), generator=gen)
        y = torch.randint(0, 4, (6,), generator=gen)
        module.train()
        outputs = module(x.numpy(), y.numpy())
        opt.step()
        module.lazy_reset_grad()
        ort_loss = write_back_running_stats(
            state, outputs, [s.to_dict() for s in bundle.manifest.running_stats]
        )
        torch_opt.zero_grad()
        loss = nn.functional.cross_entropy(clone(x), y)
        loss.backward()
        torch_opt.step()
        assert abs(ort_loss - loss.item()) < 1e-5
    ort_params = {n: np.array(p.data) for n, p in state.parameters}
    for name, value in clone.state_dict().items():
        if name in ort_params:
            np.testing.assert_allclose(ort_params[name], value.numpy(), atol=1e-5)
    assert (
        np.abs(ort_params["1.running_var"] - model.state_dict()["1.running_var"].numpy()).max()
        > 1e-3
    )
    # eval: the eval graph and inference.onnx both use the (updated) running statistics
    clone.eval()
    x = torch.randn((5, *z.input_shape), generator=gen)
    y = torch.randint(0, 4, (5,), generator=gen)
    with torch.no_grad():
        logits = clone(x)
    module.eval()
    eval_loss = float(np.asarray(module(x.numpy(), y.numpy())))
    assert abs(eval_loss - float(nn.functional.cross_entropy(logits, y))) < 1e-5
    runner = InferenceRunner(bundle, ort_params)
    np.testing.assert_allclose(runner.run(x.numpy()), logits.numpy(), atol=1e-5)

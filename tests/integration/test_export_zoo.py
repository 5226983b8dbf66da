"""The model zoo exported end to end, each model's parity with PyTorch asserted and recorded.

Every zoo model's export with its first optimizer carries both backends: the ort-training
artifacts (forward and one-step parity) and the portable step (3-step parity at export time,
then 20 more steps on short batches here). The extra SGD cases check ort-training only.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from zoo.models import NO_PORTABLE_STEP, PORTABLE_ONLY, UNSUPPORTED, ZOO

from fedge.exporter import preflight
from fedge.exporter.artifacts import OptimizerSpec
from fedge.exporter.errors import ExportError
from fedge.exporter.export import export_bundle
from fedge.exporter.portable import add_portable_step
from fedge.exporter.portable.layout import Slot, StepLayout
from fedge.exporter.portable.seeded_dropout import needs_seed
from fedge.exporter.portable.verify import step_parity
from fedge.exporter.verify import sample_labels, write_back_running_stats
from fedge.protocol.bundle import load_bundle
from fedge.protocol.inference import InferenceRunner
from fedge.protocol.manifest import TensorSpec
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
LR = 0.05
PORTABLE_STEPS = 20  # on batches of 4 and a last one of 3: short, so the file stays fast
# Each model with its first optimizer (AdamW unless the model says otherwise: see zoo notes);
# SGD too where it exercises a different optimizer graph per layer kind.
CASES = [(name, z.optimizers[0]) for name, z in ZOO.items()] + [
    (name, "sgd") for name in ("mlp", "mobilenet_block", "lstm", "embedding")
]


def _export(name: str, optimizer: str, out: Path, portable: bool = False) -> Path:
    z = ZOO[name]
    return export_bundle(
        z.build(),
        input_shape=z.input_shape,
        input_dtype=z.input_dtype,
        loss=z.loss,
        optimizer=optimizer,
        lr=LR,
        out_dir=out,
        model_name=name,
        portable=portable,
        **z.options,
    )


@pytest.mark.parametrize(("name", "optimizer"), CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_zoo_model_parity(name: str, optimizer: str, tmp_path: Path) -> None:
    portable = optimizer == ZOO[name].optimizers[0]
    bundle = load_bundle(_export(name, optimizer, tmp_path / name, portable=portable))
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
    if portable:
        _check_portable(name, bundle)


def _check_portable(name: str, bundle) -> None:
    """Both backends: the portable step exists, passed its export check, and 20 more steps."""
    m = bundle.manifest
    assert m.backends == ("ort-training", "ort-portable"), m.portable
    ver = m.verification.values["portable"]
    # dropout models too: the step's masks come from its dropout_seed input, and the check
    # feeds PyTorch the same seeds (seeded_dropout.py), so it is exact like the others
    assert (m.portable.seed_name == "dropout_seed") == needs_seed(ZOO[name].build())
    assert ver["batch_sizes"] == [8, 8, 5]
    assert ver["step_max_abs_diff"] < TOLERANCE and ver["loss_max_abs_diff"] < TOLERANCE
    numbers = _more_steps(
        ZOO[name].build(),
        bundle.file(m.portable.file),
        m.portable.state,
        m.input,
        m.label,
        m.loss.type,
        m.optimizer.type,
        m.task.num_classes,
    )
    assert numbers["steps"] == PORTABLE_STEPS
    assert numbers["step_max_abs_diff"] < TOLERANCE, numbers
    assert numbers["loss_max_abs_diff"] < TOLERANCE, numbers


def _more_steps(
    model: nn.Module,
    step_file: Path,
    state,
    input_spec: TensorSpec,
    label_spec: TensorSpec,
    loss: str,
    optimizer: str,
    num_classes: int | None,
) -> dict:
    """PORTABLE_STEPS steps of the exported step vs torch, on short batches, from the start."""
    layout = StepLayout(
        tuple(
            Slot(s.name, s.kind, tuple(s.shape), s.dtype)
            for s in state
            if s.kind != "optimizer" or s.name.startswith(f"{optimizer}/")
        ),
        input_spec.name,
        label_spec.name,
        seeded=needs_seed(model),
        decayed=optimizer == "adamw",  # AdamW's step takes weight_decay as an input
    )
    initial = {n: t.detach().numpy().copy() for n, t in model.state_dict().items()}
    for slot in layout.slots:
        initial.setdefault(slot.name, np.zeros(slot.shape, dtype=slot.dtype))
    gen = torch.Generator().manual_seed(99)
    batches = []
    for size in [4] * (PORTABLE_STEPS - 1) + [3]:
        x = preflight.sample_inputs(
            input_spec.sample_shape, input_spec.dtype, batch=size, generator=gen
        )
        y = sample_labels(
            loss, label_spec.sample_shape, batch=size, num_classes=num_classes, generator=gen
        )
        batches.append((x, y))
    # export_bundle's defaults: weight decay 0.01, betas (0.9, 0.999), eps 1e-8
    spec = OptimizerSpec(optimizer, LR, 0.01, (0.9, 0.999), 1e-8)
    return step_parity(model, step_file, layout, initial, batches, loss=loss, optimizer=spec)


def test_model_without_a_portable_step_exports_for_ort_training_with_a_complete_reason(
    tmp_path: Path,
) -> None:
    z = NO_PORTABLE_STEP["adaptive_max_pool"]
    out = export_bundle(
        z.build(), input_shape=z.input_shape, lr=LR, out_dir=tmp_path / "amp", model_name="amp"
    )
    m = load_bundle(out).manifest
    assert m.backends == ("ort-training",) and m.portable is not None
    assert m.portable.available is False
    reason = m.portable.reason
    assert reason == (
        "exporting the step to ONNX failed in module '1' (AdaptiveMaxPool2d) at operator "
        "aten.adaptive_max_pool2d_backward.default: DispatchError: No ONNX function found for "
        "<OpOverload(op='aten.adaptive_max_pool2d_backward', overload='default')>. Failure message: "
        "No decompositions registered for the real-valued input"
    )
    assert m.verification.values["portable"]["reason"] == reason
    assert not (out / "portable_step.onnx").exists()


@pytest.mark.parametrize("name", sorted(PORTABLE_ONLY))
def test_portable_only_models_get_a_step_that_matches_pytorch(name: str, tmp_path: Path) -> None:
    """ConvTranspose: no ORT training kernel, but the portable step trains it like PyTorch."""
    z = PORTABLE_ONLY[name]
    model = z.build()
    optimizer = z.optimizers[0]
    input_spec = TensorSpec("input", z.input_dtype, (None, *z.input_shape))
    label_spec = TensorSpec("labels", "int64", (None,))
    section, numbers = add_portable_step(
        model=model,
        bundle_dir=tmp_path,
        loss=z.loss,
        optimizers=[OptimizerSpec(optimizer, LR, 0.01, (0.9, 0.999), 1e-8)],
        trainable=[n for n, _ in model.named_parameters()],
        input_spec=input_spec,
        label_spec=label_spec,
        num_classes=3,
    )
    assert section.available, section.reason
    assert (section.seed_name is not None) == needs_seed(model)
    assert numbers[optimizer]["step_max_abs_diff"] < TOLERANCE
    more = _more_steps(
        model, tmp_path / section.file, section.state, input_spec, label_spec, z.loss, optimizer, 3
    )
    assert more["steps"] == PORTABLE_STEPS and more["step_max_abs_diff"] < TOLERANCE, more


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


def test_attention_dropout_refusal_names_the_layer_and_the_fix(tmp_path: Path) -> None:
    # ORT-training's gradient builder fails on dropout inside attention with an assertion
    # that names no layer; the export error must say which layer and what to change.
    z = PORTABLE_ONLY["transformer_encoder_dropout"]
    with pytest.raises(ExportError) as err:
        export_bundle(
            z.build(),
            input_shape=z.input_shape,
            input_dtype=z.input_dtype,
            optimizer="sgd",
            lr=LR,
            out_dir=tmp_path / "enc",
        )
    message = str(err.value)
    assert "ONNX Runtime could not build the training graphs" in message
    assert "\n" not in message.rstrip()
    assert "'encoder' (TransformerEncoderLayer, dropout=0.1)" in message
    assert "dropout=0.0" in message
    assert not (tmp_path / "enc").exists() or not any((tmp_path / "enc").iterdir())

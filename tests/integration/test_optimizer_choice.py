"""The optimizer is the round's choice among those the bundle carries (adamw and sgd by default).

One export serves every test here: both optimizers are in the manifest with their files, both
verified against PyTorch, covered by the content hash; a round task naming one makes either
backend train with it, matching ``torch.optim`` step for step; a name the bundle lacks aborts.
"""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from fedge.agent.backends import create_backend
from fedge.agent.backends.base import batches
from fedge.agent.backends.optimizer_choice import OptimizerUnavailable
from fedge.agent.local_training import train_locally
from fedge.exporter.export import export_bundle
from fedge.protocol.bundle import load_bundle
from fedge.protocol.errors import BundleError
from fedge.protocol.messages import TrainConfig
from fedge.protocol.sqlite_samples import Samples, split_train_validation

pytestmark = pytest.mark.integration

BACKENDS = ["ort-training", "ort-portable"]
EXPORT_LR = 0.05


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("optimizers") / "mlp"
    export_bundle(mlp(), input_shape=(64,), out_dir=out, lr=EXPORT_LR)  # default: adamw, sgd
    return out


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x, y = (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)
    return x[:96], y[:96]


def test_export_carries_both_optimizers_each_verified(bundle_dir):
    m = load_bundle(bundle_dir).manifest
    assert m.optimizer_types == ("adamw", "sgd")  # adamw first: the default
    assert m.backends == ("ort-training", "ort-portable")
    sgd = m.optimizer_named("sgd")
    assert sgd.files == {
        "ort-training": "optimizer_model_sgd.onnx",
        "ort-portable": "portable_step_sgd.onnx",
    }
    assert m.optimizer.files["ort-training"] == "optimizer_model.onnx"
    for spec in m.optimizers:
        for name in spec.files.values():
            assert name in m.files  # hashed (and signed) with the bundle
    v = m.verification.values
    assert v["step_max_abs_diff"] < 1e-5 and v["portable"]["step_max_abs_diff"] < 1e-5
    extra = v["optimizers"]["sgd"]
    assert extra["step_max_abs_diff"] < 1e-5 and extra["loss_abs_diff"] < 1e-5
    assert extra["portable"]["step_max_abs_diff"] < 1e-5 and extra["portable"]["steps"] == 3
    # the SGD step has no optimizer state and no weight decay input; AdamW's has both
    slots = {s.name for s in m.portable.state}
    assert "adamw/step" in slots and m.portable.weight_decay_name == "weight_decay"


def test_the_second_optimizers_files_are_covered_by_the_content_hash(bundle_dir, tmp_path):
    import shutil

    copy_dir = tmp_path / "b"
    shutil.copytree(bundle_dir, copy_dir)
    path = copy_dir / "optimizer_model_sgd.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="optimizer_model_sgd.onnx"):
        load_bundle(copy_dir)


def test_a_signed_bundle_covers_both_optimizers_and_inspect_lists_them(
    bundle_dir, tmp_path, capsys
):
    import argparse
    import shutil

    from fedge.exporter import cli
    from fedge.protocol import signing

    signed = tmp_path / "signed"
    shutil.copytree(bundle_dir, signed)
    key, pub = signing.write_keypair(tmp_path / "keys")
    signing.sign_bundle(signed, signing.load_private_key(key))
    parser = argparse.ArgumentParser(prog="fedge")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["inspect", str(signed), "--public-key", str(pub)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "signature:     verified:" in text
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("optimizers:"))
    assert "adamw (" in lines[first] and lines[first].endswith("[default]")
    assert lines[first + 1].lstrip().startswith("sgd (lr=0.05, momentum=0.0, weight_decay=0.0)")
    assert any(line.lstrip().startswith("sgd step max|diff| ") for line in lines)
    step = signed / "portable_step_sgd.onnx"
    step.write_bytes(step.read_bytes()[:-1])
    with pytest.raises(BundleError, match="portable_step_sgd.onnx"):
        load_bundle(signed, trusted_public_keys=[pub.read_bytes()], require_signature=True)


def torch_reference(x, y, *, kind, lr, weight_decay, epochs, batch_size, seed):
    """What the backend does, in PyTorch with torch.optim: the same shuffled batches."""
    model = copy.deepcopy(mlp()).train()
    if kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx in batches(len(y), batch_size, rng):
            loss = nn.functional.cross_entropy(
                model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx])
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {n: t.detach().numpy() for n, t in model.state_dict().items()}


def train_round(backend_name, bundle, x, y, config):
    """One round of local training as the agent runs it, from the round task's config."""
    backend = create_backend(backend_name)
    start = bundle.initial_parameters()
    update = train_locally(
        backend,
        bundle,
        Samples(x, y),
        start,
        config,
        seed_key="dev/0/1",
        validation_fraction=0.0,
        should_stop=lambda: "",
        count_seconds=lambda s: None,
    )
    assert not update.problem, update.problem
    seed = int.from_bytes(hashlib.sha256(b"dev/0/1").digest()[:4], "big")
    return backend, {n: start[n] + d for n, d in update.delta.items()}, seed


def as_trained(x, y):
    """The rows in the order train_locally hands them to the backend (its fixed split)."""
    train, _ = split_train_validation(Samples(x, y), 0.0, seed=0)
    return train.x, train.y


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_the_round_tasks_optimizer_trains_and_matches_torch(backend_name, bundle_dir, digits):
    bundle = load_bundle(bundle_dir)
    x, y = digits
    results = {}
    for kind, lr, wd in (("sgd", 0.1, -1.0), ("adamw", 0.01, 0.1)):
        config = TrainConfig(
            local_epochs=2, batch_size=32, learning_rate=lr, optimizer=kind, weight_decay=wd
        )
        backend, trained, seed = train_round(backend_name, bundle, x, y, config)
        assert backend.optimizer_choice.type == kind
        ref = torch_reference(
            *as_trained(x, y),
            kind=kind,
            lr=lr,
            weight_decay=max(wd, 0.0),
            epochs=2,
            batch_size=32,
            seed=seed,
        )
        diff = max(float(np.abs(trained[n] - ref[n]).max()) for n in trained)
        assert diff < 2e-5, (kind, diff)
        results[kind] = trained
    apart = max(
        float(np.abs(results["sgd"][n] - results["adamw"][n]).max()) for n in results["sgd"]
    )
    assert apart > 1e-3  # the choice changed the update


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_an_optimizer_the_bundle_lacks_is_refused_with_what_it_carries(
    backend_name, bundle_dir, tmp_path
):
    backend = create_backend(backend_name)
    bundle = load_bundle(bundle_dir)
    with pytest.raises(OptimizerUnavailable, match="carries adamw, sgd; got 'lion'"):
        backend.load(bundle, optimizer="lion")
    with pytest.raises(
        OptimizerUnavailable,
        match="weight decay 0.1 with optimizer sgd: .* neither weight decay nor momentum",
    ):
        backend.load(bundle, optimizer="sgd", weight_decay=0.1)

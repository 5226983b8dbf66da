"""The ort-portable backend: plain onnxruntime running the bundle's portable_step.onnx.

Checked against PyTorch (same batches, many steps), against the ort-training backend (same data,
same batches), with a short last batch (dynamic batch axis), without torch or onnx in the
process, and in a real federated round on Mosquitto.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from support.fleet import Fleet, agent_config, orchestrator_config
from torch import nn

from fedge.agent.backends import create_backend
from fedge.agent.backends.base import batches
from fedge.agent.backends.ort_portable import OrtPortableBackend
from fedge.exporter.export import export_bundle
from fedge.protocol.bundle import load_bundle
from fedge.protocol.errors import FedgeError

pytestmark = pytest.mark.integration


def small_cnn(batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    norm = [nn.BatchNorm2d(8)] if batch_norm else []
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        *norm,
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 10),
    )


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory):
    model = mlp()
    out = tmp_path_factory.mktemp("portable") / "mlp"
    export_bundle(model, input_shape=(64,), out_dir=out, optimizer="sgd", lr=0.1)
    return load_bundle(out), model, (64,)


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory):
    model = small_cnn()
    out = tmp_path_factory.mktemp("portable") / "cnn"
    export_bundle(model, input_shape=(1, 8, 8), out_dir=out, optimizer="adamw", lr=1e-3)
    return load_bundle(out), model, (1, 8, 8)


@pytest.fixture(scope="module")
def bn_bundle(tmp_path_factory):
    """A small CNN with BatchNorm: running statistics are training state too."""
    model = small_cnn(batch_norm=True)
    out = tmp_path_factory.mktemp("portable") / "cnn-bn"
    export_bundle(model, input_shape=(1, 8, 8), out_dir=out, optimizer="sgd", lr=0.05)
    return load_bundle(out), model, (1, 8, 8)


def train_with(name, bundle, x, y, **kwargs):
    backend = create_backend(name)
    backend.load(bundle)
    backend.set_parameters(bundle.initial_parameters())
    result = backend.train(x, y, **kwargs)
    return backend, result


def torch_train(model, bundle, x, y, *, epochs, batch_size, seed):
    """What the backends do, in PyTorch: the same shuffled batches, the manifest's optimizer."""
    clone = copy.deepcopy(model).train()
    spec = bundle.manifest.optimizer
    hyper = spec.hyperparameters
    if spec.type == "sgd":
        opt = torch.optim.SGD(clone.parameters(), lr=spec.lr)
    else:
        opt = torch.optim.AdamW(
            clone.parameters(),
            lr=spec.lr,
            betas=tuple(hyper["betas"]),
            eps=hyper["eps"],
            weight_decay=hyper["weight_decay"],
        )
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx in batches(len(y), batch_size, rng):
            loss = nn.functional.cross_entropy(
                clone(torch.from_numpy(x[idx])), torch.from_numpy(y[idx])
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {n: t.detach().numpy() for n, t in clone.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert set(a) <= set(b), sorted(set(a) - set(b))
    return max(float(np.abs(a[n].astype(np.float64) - b[n]).max()) for n in a)


def test_manifest_describes_the_portable_step(mlp_bundle, bn_bundle):
    for bundle, _, _ in (mlp_bundle, bn_bundle):
        m = bundle.manifest
        assert m.backends == ("ort-training", "ort-portable")
        section = m.portable
        assert section.available and section.dynamic_batch
        assert section.opset <= 21 and section.ir_version <= 10
        assert m.verification.portable_step_max_abs_diff < 1e-5
        assert m.verification.values["portable"]["batch_sizes"][-1] < 8  # a short last batch
        names = {s.name for s in section.state}
        assert {p.name for p in m.parameters} <= names
    kinds = {s.name: s.kind for s in bn_bundle[0].manifest.portable.state}
    assert kinds["1.running_mean"] == kinds["1.running_var"] == "buffer"


@pytest.mark.parametrize("which", ["mlp_bundle", "cnn_bundle", "bn_bundle"])
def test_portable_matches_pytorch_after_many_steps(which, request, digits):
    bundle, model, shape = request.getfixturevalue(which)
    x, y = digits[0][:300].reshape(-1, *shape), digits[1][:300]
    # 300 samples in batches of 32: 10 steps per epoch, the last one of 12 samples
    backend, result = train_with("ort-portable", bundle, x, y, epochs=2, batch_size=32, seed=7)
    assert result.steps == 20 and result.samples == 600
    expected = torch_train(model, bundle, x, y, epochs=2, batch_size=32, seed=7)
    got = backend.get_parameters()
    assert set(got) == {p.name for p in bundle.manifest.parameters}
    assert max_diff(got, expected) < 1e-4
    start = bundle.initial_parameters()
    assert max_diff(got, start) > 1e-3  # it did train


@pytest.mark.parametrize("which", ["mlp_bundle", "cnn_bundle", "bn_bundle"])
def test_both_backends_give_the_same_parameters(which, request, digits):
    bundle, _, shape = request.getfixturevalue(which)
    x, y = digits[0][:400].reshape(-1, *shape), digits[1][:400]
    results = {}
    for name in ("ort-training", "ort-portable"):
        backend, result = train_with(name, bundle, x, y, epochs=1, batch_size=24, seed=3)
        results[name] = (backend.get_parameters(), result.loss)
    assert max_diff(results["ort-training"][0], results["ort-portable"][0]) < 1e-4
    assert abs(results["ort-training"][1] - results["ort-portable"][1]) < 1e-4


def test_evaluate_uses_trained_weights_and_running_stats(bn_bundle, digits):
    bundle, model, shape = bn_bundle
    x, y = digits[0].reshape(-1, *shape), digits[1]
    backend, _ = train_with(
        "ort-portable", bundle, x[:1200], y[:1200], epochs=2, batch_size=32, seed=1
    )
    ev = backend.evaluate(x[1200:], y[1200:], batch_size=100)
    clone = copy.deepcopy(model)
    state = {n: torch.from_numpy(v) for n, v in backend.get_parameters().items()}
    clone.load_state_dict(state, strict=False)
    clone.eval()
    with torch.no_grad():
        logits = clone(torch.from_numpy(x[1200:]))
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(y[1200:])).item()
    acc = float((logits.argmax(1).numpy() == y[1200:]).mean())
    assert ev.samples == len(y) - 1200
    assert abs(ev.loss - loss) < 1e-4 and abs(ev.accuracy - acc) < 1e-9
    assert ev.accuracy > 0.5


@pytest.mark.parametrize(("epoch_steps", "steps"), [(0, 3), (2, 6)])
def test_should_stop_is_polled_between_runs(mlp_bundle, digits, epoch_steps, steps):
    """Per step (epoch_steps=0) it is polled before every batch; with the epoch graph before
    every run of ``epoch_steps`` batches: stopping at the 4th poll leaves 3 or 6 steps done."""
    bundle, _, _ = mlp_bundle
    calls = []

    def stop() -> str:
        calls.append(1)
        return "battery low" if len(calls) > 3 else ""

    backend = OrtPortableBackend(epoch_steps=epoch_steps)
    backend.load(bundle)
    result = backend.train(
        digits[0][:200], digits[1][:200], epochs=1, batch_size=20, seed=0, should_stop=stop
    )
    assert result.stopped == "battery low" and result.steps == steps


@pytest.mark.parametrize("which", ["mlp_bundle", "cnn_bundle", "bn_bundle"])
def test_epoch_graph_trains_exactly_like_one_step_per_run(which, request, digits):
    """Full batches 16 at a time through the step in an ONNX Loop (SGD, AdamW, BatchNorm
    running statistics), the short last batch on the dynamic session: bit-identical to one
    step per session run."""
    bundle, _, shape = request.getfixturevalue(which)
    x, y = digits[0][:600].reshape(-1, *shape), digits[1][:600]  # 18 full batches + 24
    got = {}
    for steps in (16, 0):
        backend = OrtPortableBackend(epoch_steps=steps)
        backend.load(bundle)
        result = backend.train(x, y, epochs=2, batch_size=32, seed=5)
        got[steps] = (backend.get_parameters(), result, backend._bound())
    assert got[16][2]._epoch is not None and got[0][2]._epoch is None
    assert max_diff(got[16][0], got[0][0]) == 0.0
    assert got[16][1] == got[0][1]  # loss, steps, samples
    assert got[16][1].steps == 38
    assert max_diff(got[16][0], bundle.initial_parameters()) > 1e-3


PROCESS_CHECK = """
import json, sys
import numpy as np
from fedge.agent.backends import create_backend
from fedge.protocol.bundle import load_bundle
bundle = load_bundle(sys.argv[1])
backend = create_backend("ort-portable")
backend.load(bundle)
x = np.random.default_rng(0).normal(size=(50, 64)).astype(np.float32)
y = np.arange(50) % 10
result = backend.train(x, y, epochs=1, batch_size=16, seed=0)
ev = backend.evaluate(x, y)
print(json.dumps({
    "loss": result.loss, "accuracy": ev.accuracy, "torch": sys.modules.get("torch") is not None,
    "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx") and sys.modules[m] is not None),
}))
"""


def test_portable_process_imports_neither_torch_nor_onnx(mlp_bundle):
    bundle, _, _ = mlp_bundle
    out = subprocess.run(
        [sys.executable, "-c", PROCESS_CHECK, str(bundle.root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["imported"] == [] and not report["torch"], report
    assert np.isfinite(report["loss"]) and report["accuracy"] is not None


def test_agents_run_a_round_with_the_portable_backend(
    mosquitto, digits_federation, mlp_bundle, tmp_path
):
    bundle, _, _ = mlp_bundle
    fleet = Fleet(tmp_path)
    db_path = tmp_path / "orchestrator.db"
    try:
        for i in range(2):
            cfg = agent_config(
                f"dev-{i}",
                mosquitto,
                digits_federation.device_paths[i],
                tmp_path / f"state-{i}",
                backend="ort-portable",
            )
            fleet.start(f"dev-{i}", "agent", cfg)
        fleet.start(
            "orchestrator",
            "orchestrator",
            orchestrator_config(
                mosquitto,
                bundle.root,
                db_path,
                None,
                {
                    "rounds": 1,
                    "min_devices": 2,
                    "min_reports": 2,
                    "deadline_seconds": 60,
                    "local_epochs": 1,
                    "batch_size": 16,
                },
            ),
        )
        assert fleet.wait("orchestrator", timeout=90) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()
    for i in range(2):
        assert "backend ort-portable" in fleet.logs(f"dev-{i}"), fleet.all_logs()
    db = sqlite3.connect(db_path)
    states = [r[0] for r in db.execute("SELECT state FROM rounds ORDER BY round")]
    assert states == ["committed"], fleet.all_logs()
    agents = sorted(
        r[0] for r in db.execute("SELECT agent_id FROM updates WHERE status='accepted'")
    )
    assert agents == ["dev-0", "dev-1"]


@pytest.mark.parametrize("name", ["gru", "depthwise_separable"])
def test_recurrent_and_grouped_models_train_alike_on_both_backends(name, tmp_path):
    """GRU (once traced with its batch baked in) and grouped convolutions (once refused): the
    agent's two backends train them to the same parameters, batches of 7 and a last one of 2."""
    from zoo.models import ZOO

    z = ZOO[name]
    out = tmp_path / name
    export_bundle(z.build(), input_shape=z.input_shape, out_dir=out, optimizer="sgd", lr=0.05)
    bundle = load_bundle(out)
    assert bundle.manifest.backends == ("ort-training", "ort-portable")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, *z.input_shape)).astype(np.float32)
    y = (np.arange(30) % 3).astype(np.int64)
    results = {}
    for backend_name in ("ort-training", "ort-portable"):
        backend, result = train_with(backend_name, bundle, x, y, epochs=1, batch_size=7, seed=2)
        assert result.steps == 5
        results[backend_name] = backend.get_parameters()
    assert max_diff(results["ort-training"], results["ort-portable"]) < 1e-4
    assert max_diff(results["ort-portable"], bundle.initial_parameters()) > 1e-3


@pytest.mark.parametrize("which", ["cnn_bundle", "bn_bundle"])
def test_fixed_batch_session_trains_like_the_dynamic_one(which, request, digits):
    """Full batches run on a session with the batch axis fixed, the short last one on the
    dynamic session; both share the bound state, so the result equals all-dynamic training."""
    bundle, _, shape = request.getfixturevalue(which)
    x, y = digits[0][:300].reshape(-1, *shape), digits[1][:300]  # 9 full batches + 12
    got = {}
    for fixed in (True, False):
        backend = OrtPortableBackend(static_batch=fixed, epoch_steps=0)
        backend.load(bundle)
        result = backend.train(x, y, epochs=2, batch_size=32, seed=5)
        got[fixed] = (backend.get_parameters(), result.loss, backend._bound())
    assert len(got[True][2]._sessions) == 2 and len(got[False][2]._sessions) == 1
    assert max_diff(got[True][0], got[False][0]) < 1e-5
    assert abs(got[True][1] - got[False][1]) < 1e-5
    if which == "bn_bundle":  # running statistics come through the fixed session too
        state = got[True][2]
        assert not np.allclose(state.current("1.running_mean"), 0.0)


def test_fixed_batch_session_refuses_a_batch_of_another_size(cnn_bundle, digits):
    bundle, _, shape = cnn_bundle
    backend = OrtPortableBackend(epoch_steps=0)  # the per-step path: the fixed session
    backend.load(bundle)
    x, y = digits[0][:64].reshape(-1, *shape), digits[1][:64]
    backend.train(x, y, epochs=1, batch_size=32, seed=0)
    state = backend._bound()
    with pytest.raises(FedgeError, match=r"fixed to \[32, 1, 8, 8\]"):
        state.step({"input": x[:31], "labels": y[:31]}, session=1)


def test_reloading_the_same_bundle_reuses_its_sessions(mlp_bundle, digits):
    """The agent loads the bundle every round: the sessions are built once, state is fresh."""
    bundle, _, shape = mlp_bundle
    x, y = digits[0][:100].reshape(-1, *shape), digits[1][:100]
    backend = OrtPortableBackend()
    runs = []
    for _ in range(2):
        backend.load(bundle)
        backend.set_parameters(bundle.initial_parameters())
        backend.train(x, y, epochs=1, batch_size=32, seed=1)
        state = backend._bound()
        sessions = [s for s, _ in state._sessions] + [state._epoch[0]]
        runs.append((sessions, backend.get_parameters()))
    assert len(runs[0][0]) == 2  # the dynamic session (the short batch) and the epoch graph
    assert all(a is b for a, b in zip(runs[0][0], runs[1][0], strict=True))
    assert max_diff(runs[0][1], runs[1][1]) == 0.0

"""One-logit (binary) bundles train and evaluate on both agent backends.

SQLite gives one label column, (n,); the one-logit bundle's label input is (n, 1). Before
``shape_labels`` both backends fed (n,) labels and ONNX Runtime refused them ("Invalid rank for
input: target Got: 1 Expected: 2").
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score
from torch import nn

from fedge.agent.backends import create_backend
from fedge.agent.backends.base import batches
from fedge.exporter.export import export_bundle
from fedge.protocol.bundle import load_bundle

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory):
    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 1))
    out = tmp_path_factory.mktemp("binary") / "b"
    export_bundle(
        model, input_shape=(30,), loss="bce_with_logits", optimizer="sgd", lr=0.1, out_dir=out
    )
    return load_bundle(out), model, x, y.astype(np.float32)


def _torch_train(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The backends' loop in PyTorch: same shuffled batches, SGD at the manifest's lr."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng(3)
    for _ in range(2):
        for idx in batches(len(y), 32, rng):
            out = model(torch.from_numpy(x[idx]))
            loss = nn.functional.binary_cross_entropy_with_logits(
                out, torch.from_numpy(y[idx])[:, None]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {n: t.detach().numpy() for n, t in model.state_dict().items()}


@pytest.mark.parametrize("name", ["ort-training", "ort-portable"])
def test_one_logit_bundle_trains_and_evaluates(binary, name: str, tmp_path: Path) -> None:
    bundle, model, x, y = binary
    train_x, train_y, test_x, test_y = x[:400], y[:400], x[400:], y[400:]
    backend = create_backend(name)
    backend.load(bundle)
    backend.set_parameters(bundle.initial_parameters())
    before = backend.evaluate(test_x, test_y)
    result = backend.train(train_x, train_y, epochs=2, batch_size=32, seed=3)
    after = backend.evaluate(test_x, test_y)

    assert result.steps == 26 and after.loss < before.loss
    clone = copy.deepcopy(model)
    expected = _torch_train(clone, train_x, train_y)
    got = backend.get_parameters()
    assert max(float(np.abs(got[n] - expected[n]).max()) for n in expected) < 1e-4
    torch_logits = clone(torch.from_numpy(test_x)).detach().numpy()[:, 0]
    assert after.accuracy == pytest.approx(float(((torch_logits > 0) == test_y).mean()))
    assert after.metrics["roc_auc"] == pytest.approx(roc_auc_score(test_y, torch_logits), abs=1e-6)
    assert after.accuracy > 0.85 and after.metrics["roc_auc"] > 0.95  # 2 epochs, 400 rows

"""The orchestrator's central evaluation follows the bundle's task.

Regression: CentralEvaluator hard-coded softmax over classes, so a one-logit bundle
(``Linear(.., 1)`` with ``bce_with_logits``) crashed the orchestrator at start with IndexError.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from torch import nn

from fedge.exporter.export import export_bundle
from fedge.orchestrator.evaluation import CentralEvaluator
from fedge.protocol.bundle import load_bundle
from fedge.protocol.manifest import TaskSpec
from fedge.protocol.sqlite_samples import DataSource

pytestmark = pytest.mark.integration


def _table(path: Path, x: np.ndarray, y: np.ndarray) -> DataSource:
    cols = [f"f{i}" for i in range(x.shape[1])]
    with sqlite3.connect(path) as con:
        con.execute(f"CREATE TABLE samples ({', '.join(c + ' REAL' for c in cols)}, label REAL)")
        con.executemany(
            f"INSERT INTO samples VALUES ({', '.join('?' * (len(cols) + 1))})",
            [(*map(float, row), float(label)) for row, label in zip(x, y, strict=True)],
        )
    return DataSource(path=str(path))


def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    return x, y.astype(np.float32)


def _fit(model: nn.Module, x: np.ndarray, y: np.ndarray, loss: nn.Module, steps: int) -> None:
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        loss(model(xt), yt).backward()
        opt.step()


def test_one_logit_bundle_is_evaluated_as_binary(tmp_path: Path) -> None:
    x, y = _breast_cancer()
    torch.manual_seed(0)
    model = nn.Linear(30, 1)
    _fit(model, x[:400], y[:400, None], nn.BCEWithLogitsLoss(), steps=200)
    bundle = load_bundle(
        export_bundle(
            model,
            input_shape=(30,),
            loss="bce_with_logits",
            optimizer="sgd",
            lr=0.1,
            out_dir=tmp_path / "binary",
        )
    )
    assert bundle.manifest.task == TaskSpec("binary")
    test_x, test_y = x[400:], y[400:]
    evaluator = CentralEvaluator(bundle, _table(tmp_path / "test.db", test_x, test_y))

    metrics = evaluator.evaluate(bundle.initial_parameters())  # crashed with IndexError before

    logits = model(torch.from_numpy(test_x)).detach().numpy()[:, 0]
    assert metrics["test_samples"] == len(test_y)
    assert metrics["test_accuracy"] == pytest.approx(accuracy_score(test_y, logits > 0))
    assert metrics["test_roc_auc"] == pytest.approx(roc_auc_score(test_y, logits), abs=1e-9)
    assert metrics["test_accuracy"] > 0.9 and metrics["test_roc_auc"] > 0.95
    want_loss = nn.BCEWithLogitsLoss()(torch.from_numpy(logits), torch.from_numpy(test_y))
    assert metrics["test_loss"] == pytest.approx(float(want_loss), rel=1e-5)
    untrained = {k: np.zeros_like(v) for k, v in bundle.initial_parameters().items()}
    assert evaluator.evaluate(untrained)["test_roc_auc"] == 0.5  # all logits tie


def test_regression_bundle_reports_mae_and_rmse(tmp_path: Path) -> None:
    x, _ = _breast_cancer()
    target = (x[:, :3].sum(axis=1) * 0.5).astype(np.float32)
    model = nn.Linear(30, 1)
    bundle = load_bundle(
        export_bundle(
            model,
            input_shape=(30,),
            loss="mse",
            optimizer="sgd",
            lr=0.05,
            out_dir=tmp_path / "reg",
            portable=False,
        )
    )
    assert bundle.manifest.task == TaskSpec("regression", num_targets=1)
    metrics = CentralEvaluator(bundle, _table(tmp_path / "t.db", x, target)).evaluate(
        bundle.initial_parameters()
    )
    err = model(torch.from_numpy(x)).detach().numpy()[:, 0] - target
    assert metrics["test_mae"] == pytest.approx(np.abs(err).mean(), rel=1e-5)
    assert metrics["test_rmse"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-5)
    assert metrics["test_loss"] == pytest.approx(metrics["test_rmse"] ** 2, rel=1e-9)


def test_multiclass_bundle_reports_accuracy_and_macro_f1(tmp_path: Path) -> None:
    x, y = _breast_cancer()  # two classes, as two logits with cross entropy
    model = nn.Linear(30, 2)
    _fit(model, x, y.astype(np.int64), nn.CrossEntropyLoss(), steps=100)
    bundle = load_bundle(
        export_bundle(
            model, input_shape=(30,), optimizer="sgd", out_dir=tmp_path / "mc", portable=False
        )
    )
    assert bundle.manifest.task == TaskSpec("multiclass", num_classes=2)
    metrics = CentralEvaluator(bundle, _table(tmp_path / "t.db", x, y)).evaluate(
        bundle.initial_parameters()
    )
    pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    assert metrics["test_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert metrics["test_macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert metrics["test_accuracy"] > 0.9

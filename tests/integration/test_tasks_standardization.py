"""Federated standardization in a real federation (Mosquitto, an orchestrator process, agent
processes on both backends): breast_cancer's 30 raw features (0.001 to 4000) stored as they
come, a one-logit model, and ``rounds.standardize = true`` as the only change. The issue's bar:
>= 0.95 held-out accuracy in 10 rounds. The same federation without the setting stays
clearly below (0.83 when measured), which shows the feature is what gets it there.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
from support.task_federation import run_federation, write_table
from torch import nn

from fedge.exporter.export import export_bundle

pytestmark = pytest.mark.integration

ROUNDS = 10


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """One export for both federations (each starts its own run from the same weights)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 1))
    return export_bundle(
        model,
        input_shape=(30,),
        out_dir=tmp_path_factory.mktemp("stdz") / "bundle",
        loss="bce_with_logits",
        optimizer="adamw",
        lr=0.01,
        model_name="breast-cancer-raw",
    )


def _federation(tmp_path, mosquitto, bundle, *, standardize: bool):
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)  # raw: no scaling anywhere below
    order = np.random.default_rng(0).permutation(len(y))
    d0, d1, test = order[:228], order[228:456], order[456:]
    devices = [
        (write_table(tmp_path / "d0.db", x[d0], y[d0]), {"backend": "ort-training"}),
        (write_table(tmp_path / "d1.db", x[d1], y[d1]), {"backend": "ort-portable"}),
    ]
    test_db = write_table(tmp_path / "test.db", x[test], y[test], label_type="REAL")
    result = run_federation(
        tmp_path,
        mosquitto,
        bundle,
        devices,
        test_db,
        rounds=ROUNDS,
        local_epochs=1,
        batch_size=16,
        standardize=standardize,
    )
    return result, x[np.concatenate([d0, d1])], (x[test], y[test])


def test_breast_cancer_raw_features_reach_95_percent_with_standardize_on(
    mosquitto, tmp_path, bundle
):
    result, train, (x_test, y_test) = _federation(tmp_path, mosquitto, bundle, standardize=True)
    accuracy = [m["test_accuracy"] for m in result.metrics]
    assert len(accuracy) == ROUNDS + 1 and result.accepted == 2 * ROUNDS, result.logs
    assert accuracy[-1] >= 0.95, accuracy
    db = sqlite3.connect(tmp_path / "orchestrator.db")
    (mean, std, rows, devices) = db.execute(
        "SELECT mean, std, rows, devices FROM run_statistics"
    ).fetchone()
    kinds = [k for (k,) in db.execute("SELECT kind FROM rounds ORDER BY round")]
    db.close()
    assert (rows, devices) == (len(train), 2)
    assert kinds == ["statistics"] + ["train"] * ROUNDS
    np.testing.assert_allclose(json.loads(mean), train.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(json.loads(std), train.std(axis=0), rtol=1e-9)
    print(f"\nstandardize on: test accuracy per version {np.round(accuracy, 4).tolist()}")

    # `fedge model export` of the last version takes the raw test rows and scores the same
    from fedge.cli import main
    from fedge.protocol.ort_runtime import import_onnxruntime

    out = tmp_path / "model.onnx"
    db_path = str(tmp_path / "orchestrator.db")
    assert main(["model", "export", "--database", db_path, "--bundle", str(bundle)]
                + ["--out", str(out)]) == 0  # fmt: skip
    session = import_onnxruntime().InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x_test.astype(np.float32)})[0]
    exported = float(((logits[:, 0] > 0) == (y_test == 1)).mean())
    assert abs(exported - accuracy[-1]) <= 1 / len(y_test), (exported, accuracy[-1])


def test_breast_cancer_raw_features_stay_below_without_standardize(mosquitto, tmp_path, bundle):
    result, _train, _test = _federation(tmp_path, mosquitto, bundle, standardize=False)
    accuracy = [m["test_accuracy"] for m in result.metrics]
    assert result.accepted == 2 * ROUNDS, result.logs
    assert max(accuracy) < 0.93, accuracy
    print(f"\nstandardize off: test accuracy per version {np.round(accuracy, 4).tolist()}")

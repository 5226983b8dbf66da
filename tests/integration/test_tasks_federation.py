"""Every common task trains in a real federation: Mosquitto, an orchestrator process, agent
processes on both backends, central evaluation on a held-out table.

- binary with one logit (scikit-learn breast_cancer): one device's labels INTEGER, the other's
  REAL; test accuracy beats the majority class and ROC AUC is high;
- regression (scikit-learn diabetes, MSE): test RMSE beats predicting the training mean;
- int64 token input (a tiny Embedding model on synthetic token data): one device's tokens in
  INTEGER columns, the other's in an int64 BLOB; test accuracy beats the majority class.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.task_federation import run_federation, write_table
from torch import nn

from fedge.exporter.export import export_bundle

pytestmark = pytest.mark.integration

BACKENDS = ({"backend": "ort-training"}, {"backend": "ort-portable"})


def _split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of device 0, device 1 and the test table (40% / 40% / 20%)."""
    order = np.random.default_rng(seed).permutation(n)
    a, b = int(n * 0.4), int(n * 0.8)
    return order[:a], order[a:b], order[b:]


def test_binary_one_logit_breast_cancer_integer_and_real_labels(mosquitto, tmp_path):
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    d0, d1, test = _split(len(y))
    train = np.concatenate([d0, d1])
    x = (x - x[train].mean(0)) / x[train].std(0)  # the owners store standardized features
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 1))
    bundle = export_bundle(
        model,
        input_shape=(30,),
        out_dir=tmp_path / "bundle",
        loss="bce_with_logits",
        optimizer="adamw",
        lr=0.01,
        model_name="breast-cancer",
    )
    devices = [
        (write_table(tmp_path / "d0.db", x[d0], y[d0], label_type="INTEGER"), BACKENDS[0]),
        (write_table(tmp_path / "d1.db", x[d1], y[d1], label_type="REAL"), BACKENDS[1]),
    ]
    test_db = write_table(tmp_path / "test.db", x[test], y[test], label_type="REAL")
    result = run_federation(
        tmp_path, mosquitto, bundle, devices, test_db, rounds=3, local_epochs=2, batch_size=16
    )
    majority = max(y[test].mean(), 1 - y[test].mean())
    final = result.metrics[-1]
    assert result.accepted == 6, result.logs
    assert final["test_accuracy"] > majority + 0.2, (final, majority)
    assert final["test_roc_auc"] > 0.95, final


def test_regression_diabetes_beats_predicting_the_mean(mosquitto, tmp_path):
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = x / x.std(0)  # centred by scikit-learn; unit variance, as the owners store them
    # the target in hundreds (25..346 -> 0.25..3.46): the exporter's portable-step check
    # compares losses with an absolute tolerance, which a loss of ~20,000 misses by one ulp
    y = y / 100.0
    d0, d1, test = _split(len(y))
    mean = float(y[np.concatenate([d0, d1])].mean())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad():  # the model author starts the output at the target's scale
        model[2].bias.fill_(mean)
    bundle = export_bundle(
        model,
        input_shape=(10,),
        out_dir=tmp_path / "bundle",
        loss="mse",
        optimizer="adamw",
        lr=0.01,
        weight_decay=0.0,
        model_name="diabetes",
    )
    devices = [
        (write_table(tmp_path / "d0.db", x[d0], y[d0], label_type="REAL"), BACKENDS[0]),
        (write_table(tmp_path / "d1.db", x[d1], y[d1], label_type="INTEGER"), BACKENDS[1]),
    ]
    test_db = write_table(tmp_path / "test.db", x[test], y[test], label_type="REAL")
    result = run_federation(
        tmp_path, mosquitto, bundle, devices, test_db, rounds=4, local_epochs=5, batch_size=16
    )
    baseline_rmse = float(np.sqrt(np.mean((y[test] - mean) ** 2)))
    final = result.metrics[-1]
    assert result.accepted == 8, result.logs
    assert final["test_rmse"] < 0.9 * baseline_rmse, (final, baseline_rmse)
    assert final["test_rmse"] < result.metrics[0]["test_rmse"], result.metrics


class TokenModel(nn.Module):
    """Embedding -> mean over the sequence -> 2 logits."""

    def __init__(self, vocab: int = 20, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(dim=1))


def test_int64_token_ids_from_integer_columns_and_int64_blobs(mosquitto, tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 20, size=(600, 8))
    y = (tokens >= 15).any(axis=1).astype(np.int64) ^ (tokens == 0).any(axis=1)  # ~50/50
    d0, d1, test = _split(len(y))
    torch.manual_seed(0)
    bundle = export_bundle(
        TokenModel(),
        input_shape=(8,),
        input_dtype="int64",
        out_dir=tmp_path / "bundle",
        num_classes=2,
        optimizer="adamw",
        lr=0.05,
        model_name="tokens",
    )
    blob = {"blob_column": "x", "blob_dtype": "int64", "blob_shape": [8]}
    devices = [
        (
            write_table(tmp_path / "d0.db", tokens[d0], y[d0], feature_type="INTEGER", prefix="t"),
            dict(BACKENDS[0], data={"features": ["t*"]}),
        ),
        (
            write_table(tmp_path / "d1.db", tokens[d1], y[d1], blob_dtype="int64"),
            dict(BACKENDS[1], data=blob),
        ),
    ]
    test_db = write_table(tmp_path / "test.db", tokens[test], y[test], blob_dtype="int64")
    result = run_federation(
        tmp_path,
        mosquitto,
        bundle,
        devices,
        test_db,
        rounds=3,
        local_epochs=3,
        batch_size=16,
        test_data=blob,
    )
    majority = max(y[test].mean(), 1 - y[test].mean())
    final = result.metrics[-1]
    assert result.accepted == 6, result.logs
    assert final["test_accuracy"] > majority + 0.1, (final, majority)

"""Task metrics in numpy agree with scikit-learn (the tests' reference, never a dependency)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from fedge.protocol.manifest import TaskSpec
from fedge.protocol.task_metrics import MetricsError, mean_loss, roc_auc, task_metrics

RNG = np.random.default_rng(7)


def test_multiclass_accuracy_and_macro_f1() -> None:
    logits = RNG.normal(size=(200, 5))
    y = RNG.integers(0, 5, 200).astype(np.float64)  # SQLite labels arrive as floats
    got = task_metrics(TaskSpec("multiclass", num_classes=5), logits, y)
    pred = logits.argmax(axis=1)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))


def test_binary_accuracy_and_auc_with_ties() -> None:
    y = RNG.integers(0, 2, 300).astype(np.float32)
    logits = np.round(y + RNG.normal(scale=1.0, size=300), 1)[:, None]  # many tied scores
    got = task_metrics(TaskSpec("binary"), logits, y)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, logits[:, 0] > 0))
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, logits[:, 0]), abs=1e-12)
    assert roc_auc(np.zeros(4), np.array([0.0, 0.0, 0.0, 0.0])) is None  # one class: undefined
    assert "roc_auc" not in task_metrics(TaskSpec("binary"), logits[:3], np.ones(3))


def test_multilabel_mean_accuracy_and_f1() -> None:
    logits = RNG.normal(size=(100, 4))
    y = RNG.integers(0, 2, (100, 4)).astype(np.float32)
    got = task_metrics(TaskSpec("multilabel", num_labels=4), logits, y)
    assert got["accuracy"] == pytest.approx(((logits > 0) == (y > 0.5)).mean())
    assert got["macro_f1"] == pytest.approx(f1_score(y, logits > 0, average="macro"))


def test_regression_mae_rmse() -> None:
    pred, y = RNG.normal(size=(50, 1)), RNG.normal(size=50)
    got = task_metrics(TaskSpec("regression", num_targets=1), pred, y)
    err = pred[:, 0] - y
    assert got == pytest.approx({"mae": np.abs(err).mean(), "rmse": np.sqrt((err**2).mean())})


def test_mismatched_outputs_raise() -> None:
    with pytest.raises(MetricsError, match="one|1 value"):
        task_metrics(TaskSpec("binary"), RNG.normal(size=(4, 2)), np.zeros(4))
    with pytest.raises(MetricsError, match="class ids 0..2"):
        task_metrics(
            TaskSpec("multiclass", num_classes=3), RNG.normal(size=(2, 3)), np.array([0, 3])
        )
    with pytest.raises(MetricsError, match="0 or 1"):
        task_metrics(TaskSpec("binary"), RNG.normal(size=(2, 1)), np.array([0.0, 2.0]))
    with pytest.raises(MetricsError, match="custom|outside"):
        mean_loss("custom", np.zeros((2, 1)), np.zeros(2))

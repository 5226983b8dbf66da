"""Evaluation arithmetic for every task kind: pure numpy, shared by the orchestrator's central
evaluation and the agents' local evaluation (no sklearn, no torch).

``task_metrics(task, outputs, labels)`` dispatches on the manifest's task kind:

| kind       | metrics                                                        |
|------------|----------------------------------------------------------------|
| multiclass | accuracy (argmax), macro_f1                                    |
| binary     | accuracy (sigmoid > 0.5), roc_auc (when both classes occur)    |
| multilabel | accuracy (mean over labels), macro_f1 (mean per-label F1)      |
| regression | mae, rmse                                                      |

``mean_loss(loss_type, outputs, labels)`` is the bundle's built-in loss with mean reduction.
"""

from __future__ import annotations

import numpy as np

from .errors import FedgeError
from .manifest_task import TaskSpec


class MetricsError(FedgeError):
    """Model outputs and labels do not fit the bundle's task (shape or class ids)."""


def task_metrics(task: TaskSpec, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics of ``outputs`` (raw model outputs: logits or predictions)."""
    n = len(labels)
    if len(outputs) != n:
        raise MetricsError(f"{len(outputs)} model outputs for {n} labels")
    if n == 0:
        return {}
    out = np.asarray(outputs, dtype=np.float64).reshape(n, -1)
    if task.kind == "multiclass":
        return multiclass_metrics(out, labels, task.width)
    if task.kind == "binary":
        return binary_metrics(_column(out, 1, "binary"), labels)
    if task.kind == "multilabel":
        return multilabel_metrics(_column(out, task.width, "multilabel"), labels)
    return regression_metrics(out, labels)


def multiclass_metrics(
    logits: np.ndarray, labels: np.ndarray, num_classes: int
) -> dict[str, float]:
    """Accuracy and macro F1 of argmax class ids; ``labels`` are int class ids."""
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise MetricsError(
            f"multiclass outputs must be (samples, {num_classes}), got {list(logits.shape)}"
        )
    y = _class_ids(labels, num_classes)
    pred = logits.argmax(axis=1)
    return {"accuracy": float((pred == y).mean()), "macro_f1": macro_f1(pred, y, num_classes)}


def binary_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy at sigmoid(logit) > 0.5 (logit > 0) and ROC AUC of the logits."""
    scores = logits.reshape(-1)
    y = _zero_one(labels, len(scores))
    metrics = {"accuracy": float(((scores > 0) == (y > 0.5)).mean())}
    auc = roc_auc(scores, y)
    if auc is not None:
        metrics["roc_auc"] = auc
    return metrics


def multilabel_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean per-label accuracy and mean per-label F1 (each label a binary task)."""
    y = _zero_one(labels, logits.size).reshape(logits.shape) > 0.5
    pred = logits > 0
    f1 = [_f1(pred[:, j], y[:, j]) for j in range(logits.shape[1])]
    return {"accuracy": float((pred == y).mean()), "macro_f1": float(np.mean(f1))}


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Mean absolute error and root mean squared error over every target value."""
    target = np.asarray(targets, dtype=np.float64)
    if target.size != predictions.size:
        raise MetricsError(
            f"regression outputs have {predictions.size} values, targets {target.size}"
        )
    err = predictions.reshape(-1) - target.reshape(-1)
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}


def macro_f1(pred: np.ndarray, true: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``true`` or ``pred``."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (true, pred), 1)
    tp = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1) + counts.sum(axis=0)  # (tp + fn) + (tp + fp)
    present = support > 0
    return float((2 * tp[present] / support[present]).mean())


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tied scores averaged); None when only one
    class occurs."""
    positive = labels > 0.5
    n_pos = int(positive.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average rank (1-based) for each run of tied scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def mean_loss(loss_type: str, outputs: np.ndarray, labels: np.ndarray) -> float:
    """The bundle's built-in loss (mean reduction) on model outputs, in float64 numpy."""
    out = np.asarray(outputs, dtype=np.float64)
    if loss_type == "cross_entropy":
        shifted = out - out.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        picked = np.take_along_axis(log_probs, labels.astype(np.int64)[:, None, ...], axis=1)
        return float(-picked.mean())
    target = np.asarray(labels, dtype=np.float64).reshape(out.shape)
    if loss_type == "mse":
        return float(((out - target) ** 2).mean())
    if loss_type == "l1":
        return float(np.abs(out - target).mean())
    if loss_type == "bce_with_logits":
        return float((np.maximum(out, 0) - out * target + np.log1p(np.exp(-np.abs(out)))).mean())
    raise MetricsError(f"loss {loss_type!r} cannot be computed outside its ONNX graph")


def _column(out: np.ndarray, width: int, kind: str) -> np.ndarray:
    if out.shape[1] != width:
        raise MetricsError(
            f"{kind} outputs must have {width} value(s) per sample, got {out.shape[1]}"
        )
    return out


def _class_ids(labels: np.ndarray, num_classes: int) -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    if not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0 or y.max() >= num_classes:
        raise MetricsError(f"multiclass labels must be class ids 0..{num_classes - 1}")
    return y.astype(np.int64)


def _zero_one(labels: np.ndarray, size: int) -> np.ndarray:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if y.size != size:
        raise MetricsError(f"expected {size} label values, got {y.size}")
    if not np.all((y == 0) | (y == 1)):
        raise MetricsError("binary and multi-label targets must be 0 or 1")
    return y


def _f1(pred: np.ndarray, true: np.ndarray) -> float:
    tp = float((pred & true).sum())
    denom = float(pred.sum() + true.sum())
    return 1.0 if denom == 0 else 2 * tp / denom

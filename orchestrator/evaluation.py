"""Central evaluation of a model version on a held-out SQLite table (plain onnxruntime).

The metrics follow the bundle's task (``fedge.protocol.task_metrics``): accuracy and macro F1
for multiclass; accuracy at sigmoid > 0.5 and ROC AUC for one-logit binary; mean per-label
accuracy and F1 for multi-label; MAE and RMSE for regression. Each is reported as ``test_<name>``,
with ``test_loss`` (the bundle's own loss, unless it is a custom ONNX block) and
``test_samples``.
"""

from __future__ import annotations

import numpy as np

from fedge.protocol.bundle import Bundle
from fedge.protocol.data_contract import conform_samples
from fedge.protocol.inference import InferenceRunner
from fedge.protocol.sqlite_samples import DataError, DataSource, read_samples, take_rows
from fedge.protocol.task_metrics import mean_loss, task_metrics


class CentralEvaluator:
    """Loads the test rows once; ``evaluate(params)`` returns the task's metrics."""

    def __init__(self, bundle: Bundle, source: DataSource, *, batch_size: int = 512) -> None:
        self.bundle = bundle
        self.source = source
        try:  # checked at start: a bad label is a clear error now, not a crash mid-run
            self._raw = read_samples(source, dtype=None)  # kept for standardize()
            samples = conform_samples(self._raw, bundle.manifest, source)
        except DataError as exc:
            raise DataError(f"central evaluation table ([evaluation.data]): {exc}") from None
        if len(samples) == 0:
            raise DataError(
                f"central evaluation table ([evaluation.data]) {source.path}: no rows match "
                "the data source (check table/query/where)"
            )
        self.x = samples.x
        self.y = samples.y
        self.batch_size = batch_size
        self.task = bundle.manifest.task

    def standardize(self, stats: tuple[list[float], list[float]] | None) -> None:
        """Score later versions on ``(x - mean) / std`` of the test rows, as the devices
        train (None: the raw rows)."""
        samples = conform_samples(self._raw, self.bundle.manifest, self.source, stats)
        self.x = samples.x

    def evaluate(self, params: dict[str, np.ndarray]) -> dict[str, float]:
        """``test_*`` metrics of ``params`` on the held-out rows."""
        runner = InferenceRunner(self.bundle, params)
        outputs = np.concatenate(
            [
                runner.run(take_rows(self.x, slice(i, i + self.batch_size)))
                for i in range(0, len(self.y), self.batch_size)
            ]
        )
        metrics = {f"test_{k}": v for k, v in task_metrics(self.task, outputs, self.y).items()}
        loss = self.bundle.manifest.loss.type
        if loss != "custom":
            metrics["test_loss"] = mean_loss(loss, outputs, self.y)
        if self.task.kind == "regression":  # kept for dashboards that plot it
            metrics["test_mse"] = metrics["test_rmse"] ** 2
        metrics["test_samples"] = float(len(self.y))
        return metrics

"""Central evaluation of a model version on a held-out SQLite table (plain onnxruntime)."""

from __future__ import annotations

import numpy as np

from fedge.protocol.bundle import Bundle
from fedge.protocol.inference import InferenceRunner
from fedge.protocol.sqlite_samples import DataSource, read_samples


class CentralEvaluator:
    """Loads the test rows once; ``evaluate(params)`` returns loss and (for classifiers) accuracy."""

    def __init__(self, bundle: Bundle, source: DataSource, *, batch_size: int = 512) -> None:
        self.bundle = bundle
        spec = bundle.manifest["inputs"][0]
        shape = [int(d) for d in spec["shape"][1:]]
        samples = read_samples(source, expected_features=int(np.prod(shape)) if shape else None)
        self.x = samples.x.reshape([len(samples)] + shape)
        self.y = samples.y
        self.batch_size = batch_size
        self.task = bundle.manifest.get("task", "classification")

    def evaluate(self, params: dict[str, np.ndarray]) -> dict[str, float]:
        runner = InferenceRunner(self.bundle, params)
        outputs = np.concatenate(
            [
                runner.run(self.x[i : i + self.batch_size])
                for i in range(0, len(self.y), self.batch_size)
            ]
        )
        if self.task == "classification":
            logits = outputs.astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            labels = self.y.astype(np.int64)
            loss = float(-log_probs[np.arange(len(labels)), labels].mean())
            accuracy = float((outputs.argmax(axis=1) == labels).mean())
            return {
                "test_loss": loss,
                "test_accuracy": accuracy,
                "test_samples": float(len(labels)),
            }
        err = outputs.reshape(len(self.y), -1) - self.y.reshape(len(self.y), -1)
        return {"test_mse": float(np.mean(err**2)), "test_samples": float(len(self.y))}

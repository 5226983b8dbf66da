"""The ``ort-training`` backend: ONNX Runtime's training API on the exporter's artifacts."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fedge.protocol.bundle import Bundle
from fedge.protocol.errors import FedgeError
from fedge.protocol.ort_runtime import import_training_api, single_thread_session_options
from fedge.protocol.sqlite_samples import Features, input_arrays, take_rows
from fedge.protocol.task_metrics import task_metrics

from .base import EvalResult, Params, TrainingBackend, shape_labels
from .optimizer_choice import OptimizerChoice, choose_optimizer

log = logging.getLogger(__name__)


class BackendUnavailable(FedgeError):
    """The requested training backend is not installed on this device."""


class OrtTrainingBackend(TrainingBackend):
    name = "ort-training"

    def __init__(self, *, threads: int = 1) -> None:
        self._api = import_training_api()
        if self._api is None:
            raise BackendUnavailable(
                "ort-training needs onnxruntime-training-cpu==1.19.2 (Linux x86_64, macOS, "
                "Windows; Python <= 3.12); use backend = 'ort-portable' on this device"
            )
        import onnxruntime as ort

        self._ort = ort
        self._threads = threads
        self._bundle: Bundle | None = None
        self._state: Any = None
        self._module: Any = None
        self._optimizer: Any = None
        self._infer: Any = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self.optimizer_choice: OptimizerChoice | None = None
        # a fresh ((bundle identity, optimizer graph), state, module, optimizer) built ahead
        # by prepare()
        self._spare: tuple[Any, ...] | None = None

    def load(
        self,
        bundle: Bundle,
        *,
        learning_rate: float | None = None,
        optimizer: str = "",
        weight_decay: float | None = None,
    ) -> None:
        choice = choose_optimizer(
            bundle, optimizer=optimizer, learning_rate=learning_rate, weight_decay=weight_decay
        )
        optimizer_path = self._optimizer_graph(bundle, choice)
        # A fresh checkpoint state each round: optimizer moments must not leak across rounds.
        # ORT training offers no way to zero them on a kept state (an Optimizer built on a used
        # state loads its moments back), so the fresh set is built ahead, by prepare(), in the
        # agent's idle time after an offer; only a load without one (or for another bundle or
        # optimizer graph) builds it here.
        key = (_identity(bundle), str(optimizer_path))
        spare, self._spare = self._spare, None
        if spare is None or spare[0] != key:
            spare = (key, *self._fresh(bundle, optimizer_path))
        _key, self._state, self._module, self._optimizer = spare
        self._optimizer.set_learning_rate(choice.learning_rate)
        self._lr = float(self._optimizer.get_learning_rate())
        self._bundle = bundle
        self._infer = None
        self.optimizer_choice = choice

    def _optimizer_graph(self, bundle: Bundle, choice: OptimizerChoice) -> Path:
        """The chosen optimizer's graph; for another AdamW weight decay, a copy with it.

        ORT's AdamWOptimizer takes the decay as a node attribute, not an input: the copy (in a
        scratch folder, never in the verified bundle) differs in that one attribute.
        """
        path = bundle.file(bundle.manifest.optimizer_file(choice.spec, self.name))
        if choice.type != "adamw" or choice.weight_decay == choice.spec.weight_decay:
            return Path(path)
        import onnx

        proto = onnx.load(str(path))
        for node in proto.graph.node:
            if node.op_type == "AdamWOptimizer":
                for attr in node.attribute:
                    if attr.name == "weight_decay":
                        attr.f = choice.weight_decay
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="fedge-optimizer-")
        out = Path(self._scratch.name) / f"{choice.type}-{choice.weight_decay!r}.onnx"
        onnx.save(proto, str(out))
        return out

    def prepare(self, bundle: Bundle) -> None:
        """Build the next round's fresh state, module and optimizer now (off the round's
        critical path), with the optimizer the last round chose; the next ``load`` of this
        bundle with that optimizer takes them instead of building."""
        last = self.optimizer_choice
        choice = choose_optimizer(
            bundle,
            optimizer=last.type if last is not None else "",
            weight_decay=last.weight_decay if last is not None else None,
        )
        optimizer_path = self._optimizer_graph(bundle, choice)
        self._module = self._optimizer = self._infer = None  # one set of sessions at a time
        self._state, self._bundle = None, None
        key = (_identity(bundle), str(optimizer_path))
        self._spare = (key, *self._fresh(bundle, optimizer_path))

    def _fresh(self, bundle: Bundle, optimizer_path: Path) -> tuple[Any, Any, Any]:
        api = self._api
        so = single_thread_session_options(self._ort, self._threads)
        state = api.CheckpointState.load_checkpoint(str(bundle.file("checkpoint")))
        module = api.Module(
            str(bundle.file("training_model.onnx")),
            state,
            str(bundle.file("eval_model.onnx")),
            device="cpu",
            session_options=so,
        )
        optimizer = api.Optimizer(str(optimizer_path), module)
        return state, module, optimizer

    def _loaded(self) -> Bundle:
        if self._bundle is None:
            raise FedgeError(f"{self.name}: load a bundle first (backend.load(bundle))")
        return self._bundle

    def set_parameters(self, params: Params) -> None:
        names = {n for n, _ in self._state.parameters}
        unknown = sorted(set(params) - names)
        if unknown:
            raise FedgeError(f"parameters not in this bundle's checkpoint: {unknown[:5]}")
        for name, value in params.items():
            current = self._state.parameters[name].data
            if tuple(current.shape) != tuple(value.shape):
                raise FedgeError(
                    f"parameter '{name}' has shape {value.shape}, bundle says {current.shape}"
                )
            self._state.parameters[name] = np.ascontiguousarray(value, dtype=current.dtype)

    def get_parameters(self) -> Params:
        return {n: p.data.copy() for n, p in self._state.parameters}  # .data is a live view

    def _begin_training(self, seed: int = 0) -> None:
        self._module.train()
        self._infer = None

    def _train_step(self, x: Features, y: np.ndarray) -> float:
        # the training graph takes every model input, then the labels
        outputs = self._module(*input_arrays(x), shape_labels(y, self._loaded().manifest.label))
        self._optimizer.step()
        self._module.lazy_reset_grad()
        return self._loss_after_step(outputs)

    def _trainable_names(self) -> list[str]:
        return list(self._loaded().trainable_names)

    def _learning_rate(self) -> float:
        return float(self._lr)

    def _parameter(self, name: str) -> np.ndarray:
        return self._state.parameters[name].data

    def _set_parameter(self, name: str, value: np.ndarray) -> None:
        self._state.parameters[name] = value

    def evaluate(self, x: Features, y: np.ndarray, *, batch_size: int = 256) -> EvalResult:
        if len(y) == 0:
            return EvalResult(float("nan"), None, 0)
        module = self._module
        module.eval()
        manifest = self._loaded().manifest
        losses, outputs = [], []
        for i in range(0, len(y), batch_size):
            xb = take_rows(x, slice(i, i + batch_size))
            yb = shape_labels(y[i : i + batch_size], manifest.label)
            losses.append(float(module(*input_arrays(xb), yb)) * len(yb))
            outputs.append(self._logits(xb))
        module.train()
        metrics = task_metrics(manifest.task, np.concatenate(outputs), y)
        return EvalResult(sum(losses) / len(y), metrics.get("accuracy"), len(y), metrics)

    def _loss_after_step(self, outputs: Any) -> float:
        """The step's loss; BatchNorm running statistics (manifest ``running_stats``: graph
        outputs after the loss, in order) are written back into the checkpoint state."""
        stats = self._bundle.manifest.running_stats if self._bundle else ()
        if not stats:
            return float(outputs)
        loss, *values = outputs
        for spec, value in zip(stats, values, strict=True):
            self._state.parameters[spec.param] = np.ascontiguousarray(value)
        return float(loss)

    def _logits(self, xb: Features) -> np.ndarray:
        from fedge.protocol.inference import InferenceRunner

        if self._infer is None:
            self._infer = InferenceRunner(
                self._loaded(), self.get_parameters(), threads=self._threads
            )
        return self._infer.run(xb)


def _identity(bundle: Bundle) -> tuple[str, str]:
    """Which bundle a prepared set was built from: its files' place and its content."""
    return (str(bundle.root), bundle.content_hash)

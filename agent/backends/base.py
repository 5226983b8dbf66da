"""The seam between the agent and a training engine: one interface, several backends."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedge.protocol.bundle import Bundle
from fedge.protocol.errors import FedgeError
from fedge.protocol.manifest import TensorSpec
from fedge.protocol.sqlite_samples import Features, take_rows

Params = dict[str, np.ndarray]


@dataclass
class TrainResult:
    loss: float  # mean training loss over the batches run
    steps: int
    samples: int  # samples seen (counting repeats over epochs)
    stopped: str = ""  # why training stopped early, empty if it ran to the end


@dataclass
class EvalResult:
    loss: float
    accuracy: float | None
    samples: int
    # the task's metrics (fedge.protocol.task_metrics): accuracy, macro_f1, roc_auc, mae, rmse
    metrics: dict[str, float] = field(default_factory=dict)


class TrainingBackend(ABC):
    """Load a bundle, set parameters, train over batches, evaluate, get parameters."""

    name: str = ""

    @property
    def runtime(self) -> str:
        """The engine under this backend and its version, e.g. ``onnxruntime 1.32.0``."""
        from fedge.protocol.ort_runtime import runtime_version

        return runtime_version()

    @abstractmethod
    def load(
        self,
        bundle: Bundle,
        *,
        learning_rate: float | None = None,
        optimizer: str = "",
        weight_decay: float | None = None,
    ) -> None:
        """Prepare sessions for ``bundle`` with fresh optimizer state.

        ``optimizer`` names one the bundle carries ("": its default); ``learning_rate`` and
        ``weight_decay`` (None: the bundle's) override its hyperparameters. An optimizer or
        value the bundle cannot run raises ``OptimizerUnavailable`` (optimizer_choice.py)."""

    def prepare(self, bundle: Bundle) -> None:
        """Optional: do now, between rounds, what the next ``load(bundle)`` would do (build
        sessions), so that load is quick. The results of that load must not change."""
        return None  # a backend without that work to move: nothing to do

    @abstractmethod
    def set_parameters(self, params: Params) -> None:
        """Overwrite every named parameter (trainable and frozen)."""

    @abstractmethod
    def get_parameters(self) -> Params:
        """Copies of every named parameter."""

    def train(
        self,
        x: Features,
        y: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        seed: int,
        should_stop: Callable[[], str] = lambda: "",
        proximal_mu: float = 0.0,
        anchor: Params | None = None,
    ) -> TrainResult:
        """Run optimizer steps over shuffled mini-batches; ``should_stop`` is polled per batch.

        ``x`` is one array, or a tuple of one array per model input (in the manifest's order).

        With ``proximal_mu > 0`` (FedProx) every step is followed by a step on the proximal
        term ``mu/2 * ||w - anchor||^2`` for the trainable parameters (see ``proximal_pull``).
        """
        self._begin_training(seed)
        pull = self._trainable_names() if proximal_mu > 0 and anchor else []
        lr = self._learning_rate()
        rng = np.random.default_rng(seed)
        total, steps, seen = 0.0, 0, 0
        for _ in range(epochs):
            for idx in batches(len(y), batch_size, rng):
                reason = should_stop()
                if reason:
                    return TrainResult(total / max(steps, 1), steps, seen, stopped=reason)
                total += self._train_step(take_rows(x, idx), y[idx])
                for name in pull:
                    value = proximal_pull(self._parameter(name), anchor[name], lr, proximal_mu)
                    self._set_parameter(name, value)
                steps += 1
                seen += len(idx)
        return TrainResult(total / max(steps, 1), steps, seen)

    # ---- what each backend supplies to the shared training loop ----
    @abstractmethod
    def _begin_training(self, seed: int = 0) -> None:
        """Switch to training mode; drop anything cached from the old parameters.

        ``seed`` is the round's: a backend whose steps draw random numbers (dropout) derives
        them from it."""

    @abstractmethod
    def _train_step(self, x: Features, y: np.ndarray) -> float:
        """One optimizer step on one batch; returns the batch loss."""

    @abstractmethod
    def _trainable_names(self) -> list[str]:
        """Names of the parameters the optimizer updates."""

    @abstractmethod
    def _learning_rate(self) -> float:
        """The optimizer's current learning rate."""

    @abstractmethod
    def _parameter(self, name: str) -> np.ndarray:
        """The current value of one parameter (may be a live view)."""

    @abstractmethod
    def _set_parameter(self, name: str, value: np.ndarray) -> None:
        """Overwrite one parameter."""

    @abstractmethod
    def evaluate(self, x: Features, y: np.ndarray, *, batch_size: int = 256) -> EvalResult:
        """Loss and the task's metrics without changing any parameter."""


def proximal_pull(value: np.ndarray, anchor: np.ndarray, lr: float, mu: float) -> np.ndarray:
    """One gradient step on FedProx's proximal term: w - lr * mu * (w - w_global).

    Taken after the optimizer's own step (a proximal-gradient split), so it works the same for
    every backend and optimizer without changing the exported loss.
    """
    return (value - np.float32(lr * mu) * (value - anchor)).astype(value.dtype, copy=False)


def shape_labels(y: np.ndarray, label: TensorSpec) -> np.ndarray:
    """Labels as the bundle's label input takes them: its dtype, and (n, *per-sample shape).

    A one-logit bundle's label is (n, 1); SQLite gives one label column, (n,): same values.
    """
    want = (len(y), *label.sample_shape)
    out = np.asarray(y).astype(label.dtype, copy=False)
    if out.shape == want:
        return out
    if out.size == int(np.prod(want)):
        return out.reshape(want)
    raise FedgeError(
        f"labels have shape {list(out.shape)}; the bundle's label '{label.name}' needs "
        f"{list(want)} ({list(label.sample_shape)} per sample)"
    )


def batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled index batches covering 0..n-1 once (the last may be short)."""
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]

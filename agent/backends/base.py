"""The seam between the agent and a training engine: one interface, several backends."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedge.protocol.bundle import Bundle

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


class TrainingBackend(ABC):
    """Load a bundle, set parameters, train over batches, evaluate, get parameters."""

    name: str = ""

    @abstractmethod
    def load(self, bundle: Bundle, *, learning_rate: float | None = None) -> None:
        """Prepare sessions for ``bundle`` with fresh optimizer state."""

    @abstractmethod
    def set_parameters(self, params: Params) -> None:
        """Overwrite every named parameter (trainable and frozen)."""

    @abstractmethod
    def get_parameters(self) -> Params:
        """Copies of every named parameter."""

    @abstractmethod
    def train(
        self,
        x: np.ndarray,
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

        With ``proximal_mu > 0`` (FedProx) every step is followed by a step on the proximal
        term ``mu/2 * ||w - anchor||^2`` for the trainable parameters (see ``proximal_pull``).
        """

    @abstractmethod
    def evaluate(self, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> EvalResult:
        """Loss (and accuracy for classifiers) without changing any parameter."""


def proximal_pull(value: np.ndarray, anchor: np.ndarray, lr: float, mu: float) -> np.ndarray:
    """One gradient step on FedProx's proximal term: w - lr * mu * (w - w_global).

    Taken after the optimizer's own step (a proximal-gradient split), so it works the same for
    every backend and optimizer without changing the exported loss.
    """
    return (value - np.float32(lr * mu) * (value - anchor)).astype(value.dtype, copy=False)


def batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled index batches covering 0..n-1 once (the last may be short)."""
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]

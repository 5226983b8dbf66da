"""The strategy seam: which devices train a round, what they are told, how deltas combine.

Like Flower's ``Strategy``: ``configure_round`` picks the participants, ``configure_train``
decides what to send them, ``start_aggregation`` returns an accumulator that takes one
validated delta at a time and whose ``result`` is the new global model, or None to keep the
old one. Streaming strategies (FedAvg and the server optimizers) hold O(model) memory; robust
ones (median, trimmed mean, Krum) must see every update at once and hold O(devices x model).
Server-side optimizer state (momentum, Adam moments) is exposed by ``state_dict`` so the
orchestrator can store it next to each model version and resume it after a restart.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.protocol.messages import TrainConfig

from ..selection import select_devices

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class DeviceInfo:
    agent_id: str
    num_samples: int
    backend: str
    version: str = ""


class Aggregator(ABC):
    """Accumulates one round's deltas."""

    @abstractmethod
    def add(self, delta: Params, num_samples: int) -> None:
        """Fold in one validated delta (local minus global) with its sample count."""

    @abstractmethod
    def result(self) -> Params | None:
        """The new global parameters, or None to keep the current model."""


class CollectingAggregator(Aggregator):
    """Keeps every delta (robust strategies need them all); subclasses combine them."""

    def __init__(self, global_params: Params) -> None:
        self._global = global_params
        self.deltas: list[Params] = []
        self.weights: list[float] = []

    def add(self, delta: Params, num_samples: int) -> None:
        # a frozen parameter left out of an update (parameter_travel) is a zero delta
        full = {n: delta[n] if n in delta else np.zeros_like(g) for n, g in self._global.items()}
        self.deltas.append(full)
        self.weights.append(float(num_samples))


class Strategy(ABC):
    """How rounds are configured and aggregated (keyword-only options in subclasses)."""

    name: str = ""

    def configure_round(
        self,
        round_no: int,
        devices: list[DeviceInfo],
        *,
        per_round: int,
        seed: int,
        weighted: bool = False,
    ) -> list[str]:
        """Pick participants: all devices, or a seeded sample of ``per_round`` of them."""
        return select_devices(
            [(d.agent_id, d.num_samples) for d in devices],
            per_round,
            seed=f"{seed}/{round_no}",
            weighted=weighted,
        )

    def configure_train(self, config: TrainConfig) -> TrainConfig:
        """The training settings sent with the round (FedProx adds its proximal term)."""
        return config

    @abstractmethod
    def start_aggregation(self, global_params: Params) -> Aggregator:
        """A fresh accumulator for a round that started from ``global_params``."""

    def state_dict(self) -> Params:
        """Server-side state to persist with the model version (empty when stateless)."""
        return {}

    def load_state_dict(self, state: Params) -> None:
        """Restore what ``state_dict`` returned (after an orchestrator restart)."""
        return

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{self.name}({opts})"


def replace_config(config: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(config, **changes)

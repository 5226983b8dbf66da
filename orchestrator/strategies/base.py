"""The strategy seam: which devices train a round, and how their deltas become a model.

Like Flower's ``Strategy``: ``configure_round`` decides what to send, ``start_aggregation``
returns an accumulator that takes one delta at a time (memory O(model), not O(devices x
model)) and whose ``result`` is the new global model, or None to keep the old one.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class DeviceInfo:
    agent_id: str
    num_samples: int
    backend: str


class Aggregator(ABC):
    """Accumulates one round's deltas."""

    @abstractmethod
    def add(self, delta: Params, num_samples: int) -> None:
        """Fold in one validated delta (local minus global) with its sample count."""

    @abstractmethod
    def result(self) -> Params | None:
        """The new global parameters, or None to keep the current model."""


class Strategy(ABC):
    """How rounds are configured and aggregated."""

    name: str = ""

    def configure_round(
        self, round_no: int, devices: list[DeviceInfo], *, per_round: int, seed: int
    ) -> list[str]:
        """Pick participants: all devices, or a seeded random sample of ``per_round``."""
        ids = sorted(d.agent_id for d in devices)
        if per_round and per_round < len(ids):
            ids = sorted(random.Random(f"{seed}/{round_no}").sample(ids, per_round))
        return ids

    @abstractmethod
    def start_aggregation(self, global_params: Params) -> Aggregator:
        """A fresh accumulator for a round that started from ``global_params``."""

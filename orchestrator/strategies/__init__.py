"""Aggregation strategies, by name."""

from __future__ import annotations

from fedge.protocol.errors import ConfigError

from .base import Aggregator, DeviceInfo, Strategy
from .fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg}

__all__ = ["Aggregator", "DeviceInfo", "Strategy", "FedAvg", "STRATEGIES", "create_strategy"]


def create_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}"
        ) from None

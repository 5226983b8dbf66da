"""Aggregation strategies, by name (``strategy = "fedadam"`` in the orchestrator TOML)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from fedge.protocol.errors import ConfigError

from .base import Aggregator, DeviceInfo, Strategy
from .fedadagrad import FedAdagrad
from .fedadam import FedAdam
from .fedavg import FedAvg
from .fedavgm import FedAvgM
from .fedprox import FedProx
from .fedyogi import FedYogi
from .krum import Krum
from .median import Median
from .trimmed_mean import TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (FedAvg, FedAvgM, FedProx, FedAdam, FedYogi, FedAdagrad, Median, TrimmedMean, Krum)
}

__all__ = [
    "Aggregator",
    "DeviceInfo",
    "Strategy",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedAdam",
    "FedYogi",
    "FedAdagrad",
    "Median",
    "TrimmedMean",
    "Krum",
    "STRATEGIES",
    "create_strategy",
]


def create_strategy(name: str, options: Any = None) -> Strategy:
    """Build strategy ``name``; ``options`` (a dataclass or dict) supplies the keyword
    arguments its constructor accepts (the rest belong to other strategies)."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    if options is None:
        values: dict[str, Any] = {}
    elif dataclasses.is_dataclass(options) and not isinstance(options, type):
        values = dataclasses.asdict(options)
    else:
        values = dict(options)
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in values.items() if k in accepted}
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"strategy {name!r}: {exc}") from None

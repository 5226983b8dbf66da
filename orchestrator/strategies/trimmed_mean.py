"""Coordinate-wise trimmed mean (Yin et al. 2018): drop the ``trim_fraction`` largest and
smallest values of every coordinate, average the rest.

Not streaming: every update of the round is held in memory (O(devices x model)).
"""

from __future__ import annotations

from .aggregate import Params, apply_delta, trimmed_mean
from .base import Aggregator, CollectingAggregator, Strategy


class TrimmedMeanAggregator(CollectingAggregator):
    def __init__(self, global_params: Params, trim_fraction: float, server_lr: float) -> None:
        super().__init__(global_params)
        self._trim = trim_fraction
        self._server_lr = server_lr

    def result(self) -> Params | None:
        if not self.deltas:
            return None
        return apply_delta(self._global, trimmed_mean(self.deltas, self._trim), self._server_lr)


class TrimmedMean(Strategy):
    name = "trimmed_mean"

    def __init__(self, *, trim_fraction: float = 0.2, server_lr: float = 1.0) -> None:
        if not 0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
        self.trim_fraction = trim_fraction
        self.server_lr = server_lr

    def start_aggregation(self, global_params: Params) -> Aggregator:
        return TrimmedMeanAggregator(global_params, self.trim_fraction, self.server_lr)

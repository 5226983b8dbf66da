"""Coordinate-wise median (Yin et al. 2018): robust to a minority of arbitrary updates.

Not streaming: every update of the round is held in memory (O(devices x model)).
"""

from __future__ import annotations

from .aggregate import Params, apply_delta, coordinate_median
from .base import Aggregator, CollectingAggregator, Strategy


class MedianAggregator(CollectingAggregator):
    def __init__(self, global_params: Params, server_lr: float) -> None:
        super().__init__(global_params)
        self._server_lr = server_lr

    def result(self) -> Params | None:
        if not self.deltas:
            return None
        return apply_delta(self._global, coordinate_median(self.deltas), self._server_lr)


class Median(Strategy):
    name = "median"

    def __init__(self, *, server_lr: float = 1.0) -> None:
        self.server_lr = server_lr

    def start_aggregation(self, global_params: Params) -> Aggregator:
        return MedianAggregator(global_params, self.server_lr)

"""(Multi-)Krum (Blanchard et al. 2017; El Mhamdi et al. 2018): keep the ``keep`` updates
closest to their ``n - byzantine - 2`` nearest neighbours, then FedAvg those.

``keep = 1`` is Krum; ``keep = 0`` means ``n - byzantine`` (Multi-Krum's usual choice).
Not streaming: pairwise distances need every update (O(devices x model) memory,
O(devices^2 x model) time).
"""

from __future__ import annotations

import logging

from .aggregate import Params, apply_delta, multi_krum_select, weighted_mean
from .base import Aggregator, CollectingAggregator, Strategy

log = logging.getLogger(__name__)


class KrumAggregator(CollectingAggregator):
    def __init__(self, global_params: Params, byzantine: int, keep: int, server_lr: float) -> None:
        super().__init__(global_params)
        self._f = byzantine
        self._keep = keep
        self._server_lr = server_lr
        self.selected: list[int] = []

    def result(self) -> Params | None:
        if not self.deltas:
            return None
        keep = self._keep or max(1, len(self.deltas) - self._f)
        self.selected = multi_krum_select(self.deltas, self._f, keep)
        log.info("krum kept updates %s of %d", self.selected, len(self.deltas))
        mean = weighted_mean(
            [self.deltas[i] for i in self.selected], [self.weights[i] for i in self.selected]
        )
        return apply_delta(self._global, mean, self._server_lr)


class Krum(Strategy):
    name = "krum"

    def __init__(self, *, byzantine: int = 1, keep: int = 0, server_lr: float = 1.0) -> None:
        if byzantine < 0 or keep < 0:
            raise ValueError("byzantine and keep must be >= 0")
        self.byzantine = byzantine
        self.keep = keep
        self.server_lr = server_lr

    def start_aggregation(self, global_params: Params) -> Aggregator:
        return KrumAggregator(global_params, self.byzantine, self.keep, self.server_lr)

"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the devices' deltas."""

from __future__ import annotations

from .aggregate import Params, WeightedMean, apply_delta
from .base import Aggregator, Strategy


class StreamingMeanAggregator(Aggregator):
    """Folds deltas into a running weighted mean; ``finish(mean)`` turns it into a model."""

    def __init__(self, global_params: Params, finish) -> None:
        self._global = global_params
        self._mean = WeightedMean()
        self._finish = finish

    def add(self, delta: Params, num_samples: int) -> None:
        self._mean.add(delta, float(num_samples))

    def result(self) -> Params | None:
        mean = self._mean.mean()
        if mean is None:
            return None
        return self._finish(self._global, mean)


class FedAvg(Strategy):
    """Weighted by each device's sample count; ``server_lr`` 1.0 is the classic algorithm."""

    name = "fedavg"

    def __init__(self, *, server_lr: float = 1.0) -> None:
        self.server_lr = server_lr

    def start_aggregation(self, global_params: Params) -> Aggregator:
        return StreamingMeanAggregator(
            global_params, lambda g, mean: apply_delta(g, mean, self.server_lr)
        )

"""FedAvgM (Hsu et al. 2019): FedAvg with server momentum, ``v = momentum*v + mean delta``."""

from __future__ import annotations

from .aggregate import Params, apply_delta, momentum_update
from .base import Aggregator, Strategy
from .fedavg import StreamingMeanAggregator


class FedAvgM(Strategy):
    """Streaming; the velocity persists across rounds (and restarts, via ``state_dict``)."""

    name = "fedavgm"

    def __init__(self, *, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        self.server_lr = server_lr
        self.momentum = momentum
        self._velocity: Params | None = None

    def _finish(self, global_params: Params, mean: Params) -> Params:
        self._velocity = momentum_update(self._velocity, mean, self.momentum)
        return apply_delta(global_params, self._velocity, self.server_lr)

    def start_aggregation(self, global_params: Params) -> Aggregator:
        return StreamingMeanAggregator(global_params, self._finish)

    def state_dict(self) -> Params:
        return {f"velocity/{k}": v for k, v in (self._velocity or {}).items()}

    def load_state_dict(self, state: Params) -> None:
        v = {k.split("/", 1)[1]: a for k, a in state.items() if k.startswith("velocity/")}
        self._velocity = v or None

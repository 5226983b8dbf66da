"""Server optimizers on the averaged delta (Reddi et al. 2021, "Adaptive Federated
Optimization"): the mean delta is a pseudo-gradient for Adagrad, Adam or Yogi on the server."""

from __future__ import annotations

from .aggregate import Params, adaptive_update, apply_delta
from .base import Aggregator, Strategy
from .fedavg import StreamingMeanAggregator


class FedOpt(Strategy):
    """Streaming mean, then ``x += eta * m / (sqrt(v) + tau)``; m and v persist."""

    kind = ""

    def __init__(
        self,
        *,
        eta: float = 0.03,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        if eta <= 0 or tau <= 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1:
            raise ValueError("need eta > 0, tau > 0 and 0 <= beta1, beta2 < 1")
        self.eta = eta
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau
        self._m: Params | None = None
        self._v: Params | None = None

    def _finish(self, global_params: Params, mean: Params) -> Params:
        self._m, self._v, step = adaptive_update(
            self.kind, self._m, self._v, mean, beta1=self.beta1, beta2=self.beta2, tau=self.tau
        )
        return apply_delta(global_params, step, self.eta)

    def start_aggregation(self, global_params: Params) -> Aggregator:
        return StreamingMeanAggregator(global_params, self._finish)

    def state_dict(self) -> Params:
        out: Params = {}
        for prefix, d in (("m", self._m), ("v", self._v)):
            out.update({f"{prefix}/{k}": a for k, a in (d or {}).items()})
        return out

    def load_state_dict(self, state: Params) -> None:
        m = {k[2:]: a for k, a in state.items() if k.startswith("m/")}
        v = {k[2:]: a for k, a in state.items() if k.startswith("v/")}
        self._m, self._v = (m or None), (v or None)

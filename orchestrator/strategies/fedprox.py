"""FedProx (Li et al. 2020): FedAvg on the server; devices add ``mu/2 * ||w - w_global||^2``.

The proximal term lives in the agent's training loop; the server's part is to send
``proximal_mu`` in every round's TrainConfig.
"""

from __future__ import annotations

from fedge.protocol.messages import TrainConfig

from .base import replace_config
from .fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, *, proximal_mu: float = 0.01, server_lr: float = 1.0) -> None:
        super().__init__(server_lr=server_lr)
        if proximal_mu < 0:
            raise ValueError("proximal_mu must be >= 0")
        self.proximal_mu = proximal_mu

    def configure_train(self, config: TrainConfig) -> TrainConfig:
        return replace_config(config, proximal_mu=self.proximal_mu)

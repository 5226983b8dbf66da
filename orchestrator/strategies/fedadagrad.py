"""FedAdagrad (Reddi et al. 2021): Adagrad: v = v + delta^2 (beta2 unused)."""

from __future__ import annotations

from .fedopt import FedOpt


class FedAdagrad(FedOpt):
    name = "fedadagrad"
    kind = "adagrad"

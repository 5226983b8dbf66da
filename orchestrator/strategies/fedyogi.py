"""FedYogi (Reddi et al. 2021): Yogi: v = v - (1-beta2)*delta^2*sign(v - delta^2), a slower-growing v than Adam."""

from __future__ import annotations

from .fedopt import FedOpt


class FedYogi(FedOpt):
    name = "fedyogi"
    kind = "yogi"

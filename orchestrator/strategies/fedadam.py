"""FedAdam (Reddi et al. 2021): Adam: v = beta2*v + (1-beta2)*delta^2."""

from __future__ import annotations

from .fedopt import FedOpt


class FedAdam(FedOpt):
    name = "fedadam"
    kind = "adam"

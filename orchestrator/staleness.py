"""Staleness weights of buffered asynchronous aggregation (FedBuff).

A delta trained from version ``v`` and accepted when the newest version is ``v + s`` has
staleness ``s``; its contribution is scaled by ``weight(s)`` (1 for a fresh delta):

- ``constant``: 1 for every accepted delta (the staleness cap alone bounds the harm);
- ``polynomial``: ``(1 + s) ** -a`` (FedBuff / FedAsync's default, ``a = 0.5``);
- ``hinge``: 1 up to ``b`` versions behind, then ``1 / (a * (s - b) + 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedge.protocol.errors import ConfigError

KINDS = ("constant", "polynomial", "hinge")


@dataclass(frozen=True)
class StalenessWeight:
    kind: str = "polynomial"
    exponent: float = 0.5  # polynomial: a; hinge: the slope a
    hinge_after: int = 4  # hinge: b, the staleness still weighted 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"staleness function {self.kind!r} unknown; one of {list(KINDS)}")
        if not 0 <= self.exponent <= 10:
            raise ConfigError(f"staleness exponent must be 0-10, got {self.exponent}")
        if self.hinge_after < 0:
            raise ConfigError(f"staleness hinge_after must be >= 0, got {self.hinge_after}")

    def __call__(self, staleness: int) -> float:
        s = max(0, staleness)
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return float((1.0 + s) ** -self.exponent)
        if s <= self.hinge_after:
            return 1.0
        return 1.0 / (self.exponent * (s - self.hinge_after) + 1.0)

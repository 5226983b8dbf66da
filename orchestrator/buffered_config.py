"""Settings of buffered asynchronous runs (``mode = "async"``, the ``[buffered]`` table)."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.protocol.errors import ConfigError

from .staleness import KINDS, StalenessWeight

MODES = ("sync", "async")


@dataclass
class BufferedSettings:
    buffer_size: int = 10  # K: commit a new version every K accepted deltas
    max_concurrency: int = 20  # C: at most this many devices hold a training slot at once
    slot_seconds: float = 60.0  # a slot not answered within this long expires (frees the place)
    max_staleness: int = 10  # refuse deltas more than this many versions behind
    staleness: str = "polynomial"  # constant | polynomial | hinge
    staleness_exponent: float = 0.5  # polynomial (1+s)^-a; hinge slope
    staleness_hinge_after: int = 4  # hinge: staleness up to this weighs 1
    retry_after: float = 2.0  # devices refused a slot ask again after this long

    def validate(self) -> None:
        """Raise ConfigError naming the first key out of range."""
        checks = (
            ("buffer_size", 1 <= self.buffer_size <= 100_000, "1-100000"),
            ("max_concurrency", 1 <= self.max_concurrency <= 1_000_000, "1-1000000"),
            ("slot_seconds", 0.1 <= self.slot_seconds <= 86_400, "0.1-86400"),
            ("max_staleness", 0 <= self.max_staleness <= 100_000, "0-100000"),
            ("staleness", self.staleness in KINDS, " or ".join(KINDS)),
            ("staleness_exponent", 0 <= self.staleness_exponent <= 10, "0-10"),
            ("staleness_hinge_after", 0 <= self.staleness_hinge_after <= 100_000, ">= 0"),
            ("retry_after", 0.05 <= self.retry_after <= 3600, "0.05-3600"),
        )
        for key, ok, allowed in checks:
            if not ok:
                raise ConfigError(
                    f"setting 'buffered.{key}' = {getattr(self, key)!r} is out of range; "
                    f"allowed: {allowed}"
                )

    def weight(self) -> StalenessWeight:
        return StalenessWeight(self.staleness, self.staleness_exponent, self.staleness_hinge_after)


def validate_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"setting 'mode' = {mode!r} unknown; one of {list(MODES)}")
    return mode

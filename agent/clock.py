"""The agent's two clocks, passed in so that a unit test can drive time by hand."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall time for round deadlines (the orchestrator's clock), monotonic time for intervals."""

    def time(self) -> float:
        """Seconds since the epoch (compared with ``RoundTask.deadline``)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards (re-send intervals)."""
        ...


class SystemClock:
    """The real clocks of this machine."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

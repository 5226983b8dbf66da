"""When may this device train? CPU idle, power, temperature, time windows, a daily budget.

Readings come from a :class:`Sensors` object (psutil, /sys, the clock). Any reading can be
replaced by a JSON file (``eligibility.override_file``) that is re-read on every check, so a
test or a simulation can make the device busy, hot or unplugged from outside the process::

    {"load_per_cpu": 3.5, "on_ac": false, "battery_percent": 12, "temperature_c": 81,
     "time": "14:30", "force_ineligible": "user is gaming"}
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fedge.protocol.errors import ConfigError

log = logging.getLogger(__name__)

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


@dataclass
class EligibilitySettings:
    """The ``[eligibility]`` table of agent.toml; 0 or empty switches a rule off."""

    max_load_per_cpu: float = 0.0  # 1-minute load average divided by the CPU count
    idle_minutes: float = 0.0  # ... must stay below max_load_per_cpu for this long
    min_battery_percent: float = 0.0  # on battery (not on AC): train only above this charge
    require_ac: bool = False  # never train on battery
    max_temperature_c: float = 0.0  # hottest sensor (Pi: thermal_zone0)
    windows: list[str] = field(default_factory=list)  # local time, e.g. ["22:00-06:00"]
    max_minutes_per_day: float = 0.0  # training time budget per local calendar day
    override_file: str = ""  # JSON readings that replace the real ones (tests, simulation)
    check_seconds: float = 5.0  # how often an idle agent re-checks and reports a change


@dataclass
class Readings:
    load_per_cpu: float | None = None
    on_ac: bool | None = None  # None: no battery (a desktop or a Pi): counts as on AC
    battery_percent: float | None = None
    temperature_c: float | None = None
    now: datetime = field(default_factory=datetime.now)
    forced: str = ""  # from the override file: ineligible with this reason

    def to_dict(self) -> dict[str, Any]:
        return {
            "load_per_cpu": self.load_per_cpu,
            "on_ac": self.on_ac,
            "battery_percent": self.battery_percent,
            "temperature_c": self.temperature_c,
            "time": self.now.strftime("%H:%M"),
        }


def _psutil() -> Any:
    try:
        import psutil

        return psutil
    except ImportError:  # pragma: no cover - psutil is an agent dependency
        return None


class Sensors:
    """Real readings, each replaceable through the override file."""

    def __init__(self, override_file: str = "") -> None:
        self.override_file = Path(override_file) if override_file else None

    def _overrides(self) -> dict[str, Any]:
        if self.override_file is None or not self.override_file.is_file():
            return {}
        try:
            data = json.loads(self.override_file.read_text() or "{}")
        except (OSError, ValueError) as exc:
            log.warning("eligibility override %s unreadable (%s); ignored", self.override_file, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def load_per_cpu(self) -> float | None:
        try:
            return os.getloadavg()[0] / (os.cpu_count() or 1)
        except (AttributeError, OSError):  # Windows, or no /proc: no load average
            ps = _psutil()
            try:
                return ps.cpu_percent(interval=None) / 100.0 if ps else None
            except Exception:  # noqa: BLE001 - no readable CPU statistics at all
                return None

    def power(self) -> tuple[bool | None, float | None]:
        ps = _psutil()
        try:
            battery = ps.sensors_battery() if ps and hasattr(ps, "sensors_battery") else None
        except Exception:  # noqa: BLE001 - platform probes fail in many odd ways
            battery = None
        if battery is None:
            return None, None
        return bool(battery.power_plugged), float(battery.percent)

    def temperature_c(self) -> float | None:
        try:
            return int(THERMAL_ZONE.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            pass
        ps = _psutil()
        try:
            temps = ps.sensors_temperatures() if ps and hasattr(ps, "sensors_temperatures") else {}
        except Exception:  # noqa: BLE001
            temps = {}
        values = [t.current for entries in temps.values() for t in entries if t.current]
        return max(values) if values else None

    def read(self) -> Readings:
        o = self._overrides()
        on_ac, percent = self.power()
        now = datetime.now()
        if "time" in o:
            try:
                hh, mm = parse_clock(str(o["time"]))
                now = now.replace(hour=hh, minute=mm)
            except ConfigError:
                log.warning("override time %r is not HH:MM; ignored", o["time"])
        return Readings(
            load_per_cpu=o["load_per_cpu"] if "load_per_cpu" in o else self.load_per_cpu(),
            on_ac=o["on_ac"] if "on_ac" in o else on_ac,
            battery_percent=o["battery_percent"] if "battery_percent" in o else percent,
            temperature_c=o["temperature_c"] if "temperature_c" in o else self.temperature_c(),
            now=now,
            forced=str(o.get("force_ineligible") or ""),
        )


def parse_clock(text: str) -> tuple[int, int]:
    hh, sep, mm = text.strip().partition(":")
    try:
        h, m = int(hh), int(mm)
    except ValueError:
        raise ConfigError(f"time {text!r} is not HH:MM") from None
    if not sep or not (0 <= h <= 24 and 0 <= m < 60):
        raise ConfigError(f"time {text!r} is not HH:MM")
    return h, m


def parse_window(text: str) -> tuple[int, int]:
    """'22:00-06:00' -> (start, end) in minutes after midnight; end < start wraps midnight."""
    start, sep, end = text.partition("-")
    if not sep:
        raise ConfigError(f"eligibility window {text!r} is not HH:MM-HH:MM (e.g. '22:00-06:00')")
    (h1, m1), (h2, m2) = parse_clock(start), parse_clock(end)
    return h1 * 60 + m1, h2 * 60 + m2


def in_window(minute: int, window: tuple[int, int]) -> bool:
    start, end = window
    if start <= end:
        return start <= minute < end
    return minute >= start or minute < end


@dataclass
class Decision:
    eligible: bool
    reason: str = ""


class EligibilityPolicy:
    """Combine the readings with the settings into one decision and a reason a person reads."""

    def __init__(
        self,
        settings: EligibilitySettings,
        sensors: Sensors | None = None,
        *,
        minutes_today: Callable[[str], float] = lambda day: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.sensors = sensors or Sensors(settings.override_file)
        self.windows = [parse_window(w) for w in settings.windows]
        self.minutes_today = minutes_today
        self.clock = clock
        self._idle_since: float | None = None
        self.last: Readings | None = None

    def check(self, *, extra_minutes: float = 0.0) -> Decision:
        """Eligible now? ``extra_minutes``: training time of the round in progress, not yet saved."""
        s = self.settings
        r = self.sensors.read()
        self.last = r
        if r.forced:
            return Decision(False, f"override: {r.forced}")
        if s.max_load_per_cpu > 0 and r.load_per_cpu is not None:
            now = self.clock()
            if r.load_per_cpu >= s.max_load_per_cpu:
                self._idle_since = None
                return Decision(
                    False,
                    f"CPU busy: load {r.load_per_cpu:.2f} per core >= {s.max_load_per_cpu:g}",
                )
            if self._idle_since is None:
                self._idle_since = now
            waited = (now - self._idle_since) / 60.0
            if waited < s.idle_minutes:
                return Decision(
                    False, f"CPU idle for {waited:.1f} of {s.idle_minutes:g} required minutes"
                )
        if r.on_ac is False:
            if s.require_ac:
                return Decision(False, "on battery (require_ac)")
            if r.battery_percent is not None and r.battery_percent < s.min_battery_percent:
                return Decision(
                    False,
                    f"on battery at {r.battery_percent:.0f}% < {s.min_battery_percent:g}%",
                )
        if s.max_temperature_c > 0 and r.temperature_c is not None:
            if r.temperature_c >= s.max_temperature_c:
                return Decision(
                    False, f"too hot: {r.temperature_c:.1f} °C >= {s.max_temperature_c:g} °C"
                )
        if self.windows:
            minute = r.now.hour * 60 + r.now.minute
            if not any(in_window(minute, w) for w in self.windows):
                return Decision(
                    False, f"outside the training windows {', '.join(s.windows)} ({r.now:%H:%M})"
                )
        if s.max_minutes_per_day > 0:
            used = self.minutes_today(r.now.strftime("%Y-%m-%d")) + extra_minutes
            if used >= s.max_minutes_per_day:
                return Decision(
                    False,
                    f"daily training budget used: {used:.1f} of {s.max_minutes_per_day:g} minutes",
                )
        return Decision(True, "")


def apply_process_limits(nice: int) -> None:
    """Lower this process's priority (``nice`` > 0) so the device's owner comes first."""
    if nice <= 0 or not hasattr(os, "nice"):
        return
    try:
        os.nice(nice)
    except OSError as exc:
        log.warning("could not lower priority with nice %d: %s", nice, exc)


class DutyCycle:
    """Sleep between batches so training uses at most ``max_cpu_percent`` of one core's time."""

    def __init__(self, max_cpu_percent: float, *, sleep: Callable[[float], None] = time.sleep):
        self.fraction = min(max(max_cpu_percent, 1.0), 100.0) / 100.0
        self._sleep = sleep
        self._mark: float | None = None
        self.slept = 0.0

    def pause(self) -> None:
        """Call between batches: rests ``busy * (1/fraction - 1)`` after ``busy`` seconds of work."""
        now = time.monotonic()
        if self._mark is not None and self.fraction < 1.0:
            busy = now - self._mark
            rest = min(busy * (1.0 / self.fraction - 1.0), 10.0)
            if rest > 0:
                self._sleep(rest)
                self.slept += rest
        self._mark = time.monotonic()

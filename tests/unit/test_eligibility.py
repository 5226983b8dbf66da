"""Eligibility policy: each rule on its own, read through the override file as the agent does."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from fedge.agent.eligibility import (
    DutyCycle,
    EligibilityPolicy,
    EligibilitySettings,
    Readings,
    Sensors,
    in_window,
    parse_window,
)
from fedge.agent.state import AgentState
from fedge.protocol.errors import ConfigError


class FakeSensors(Sensors):
    def __init__(self, **readings):
        super().__init__()
        self.r = Readings(**readings)

    def read(self) -> Readings:
        return self.r


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_defaults_are_always_eligible():
    policy = EligibilityPolicy(EligibilitySettings(), FakeSensors(load_per_cpu=9.0, on_ac=False))
    assert policy.check().eligible


def test_cpu_must_stay_idle_for_n_minutes():
    clock = Clock()
    sensors = FakeSensors(load_per_cpu=0.9)
    policy = EligibilityPolicy(
        EligibilitySettings(max_load_per_cpu=0.5, idle_minutes=2), sensors, clock=clock
    )
    d = policy.check()
    assert not d.eligible and "CPU busy: load 0.90" in d.reason
    sensors.r.load_per_cpu = 0.1
    assert "idle for 0.0 of 2" in policy.check().reason
    clock.t += 119
    assert not policy.check().eligible
    clock.t += 2
    assert policy.check().eligible
    sensors.r.load_per_cpu = 0.7  # a spike restarts the idle timer
    assert not policy.check().eligible
    sensors.r.load_per_cpu = 0.1
    clock.t += 60
    assert not policy.check().eligible


@pytest.mark.parametrize(
    ("on_ac", "percent", "settings", "eligible", "reason"),
    [
        (None, None, {"require_ac": True}, True, ""),  # no battery: a desktop or a Pi
        (True, 5.0, {"min_battery_percent": 50}, True, ""),
        (False, 80.0, {"min_battery_percent": 50}, True, ""),
        (False, 30.0, {"min_battery_percent": 50}, False, "on battery at 30% < 50%"),
        (False, 99.0, {"require_ac": True}, False, "on battery (require_ac)"),
    ],
)
def test_power(on_ac, percent, settings, eligible, reason):
    policy = EligibilityPolicy(
        EligibilitySettings(**settings), FakeSensors(on_ac=on_ac, battery_percent=percent)
    )
    d = policy.check()
    assert (d.eligible, d.reason) == (eligible, reason)


def test_temperature():
    sensors = FakeSensors(temperature_c=71.5)
    policy = EligibilityPolicy(EligibilitySettings(max_temperature_c=70), sensors)
    assert policy.check().reason == "too hot: 71.5 °C >= 70 °C"
    sensors.r.temperature_c = 55.0
    assert policy.check().eligible


def test_windows_wrap_midnight():
    w = parse_window("22:00-06:00")
    assert in_window(23 * 60, w) and in_window(5 * 60 + 59, w)
    assert not in_window(6 * 60, w) and not in_window(12 * 60, w)
    sensors = FakeSensors(now=datetime(2026, 1, 1, 14, 30))
    policy = EligibilityPolicy(EligibilitySettings(windows=["22:00-06:00", "12:00-13:00"]), sensors)
    assert "outside the training windows 22:00-06:00, 12:00-13:00 (14:30)" in policy.check().reason
    sensors.r.now = datetime(2026, 1, 1, 12, 15)
    assert policy.check().eligible
    with pytest.raises(ConfigError, match="HH:MM-HH:MM"):
        parse_window("22:00")
    with pytest.raises(ConfigError, match="not HH:MM"):
        parse_window("25:99-01:00")


def test_daily_budget_counts_saved_and_running_minutes(tmp_path):
    state = AgentState(tmp_path / "agent.db")
    day = "2026-01-01"
    sensors = FakeSensors(now=datetime(2026, 1, 1, 9, 0))
    policy = EligibilityPolicy(
        EligibilitySettings(max_minutes_per_day=10), sensors, minutes_today=state.training_minutes
    )
    state.add_training_seconds(day, 300)
    state.add_training_seconds(day, 240)
    assert state.training_minutes(day) == pytest.approx(9.0)
    assert policy.check().eligible
    d = policy.check(extra_minutes=1.5)
    assert not d.eligible and "10.5 of 10 minutes" in d.reason
    assert state.training_minutes("2026-01-02") == 0.0
    state.close()


def test_override_file_is_reread_on_every_check(tmp_path):
    path = tmp_path / "sensors.json"
    settings = EligibilitySettings(max_temperature_c=70, override_file=str(path))
    policy = EligibilityPolicy(settings)
    path.write_text(json.dumps({"temperature_c": 20}))
    assert policy.check().eligible
    path.write_text(json.dumps({"temperature_c": 90}))
    assert "too hot: 90.0" in policy.check().reason
    path.write_text(json.dumps({"force_ineligible": "owner is gaming"}))
    assert policy.check().reason == "override: owner is gaming"
    path.write_text("{not json")  # a half-written file is ignored, not fatal
    assert policy.check().eligible


def test_real_sensors_read_without_error():
    r = Sensors().read()
    assert r.load_per_cpu is None or r.load_per_cpu >= 0
    assert r.on_ac in (None, True, False)


def test_duty_cycle_rests_in_proportion():
    slept = []
    duty = DutyCycle(25, sleep=slept.append)
    duty.pause()
    assert slept == []  # nothing measured yet
    duty._mark -= 0.1  # pretend a 0.1 s batch ran
    duty.pause()
    assert slept[0] == pytest.approx(0.3, rel=0.05)  # 25 % busy: rest 3x the work
    full = DutyCycle(100, sleep=slept.append)
    full.pause()
    full.pause()
    assert len(slept) == 1

"""The agent's settings (one TOML file; FEDGE_* and --set override any key).

Every key declares its range or allowed values; ``load_settings`` refuses anything else at
start with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

from fedge.protocol.fields import MAX_SECONDS, NAME, Len, Match, OneOf, Range
from fedge.protocol.mqtt_link import MqttSettings
from fedge.protocol.sqlite_samples import DataSource

from .eligibility import EligibilitySettings

BACKENDS = ("auto", "ort-training", "ort-portable")  # = agent.backends.create_backend's names

_CLOCK = r"\s*([01]?[0-9]|2[0-4]):[0-5][0-9]\s*"  # as eligibility.parse_clock reads it
ELIGIBILITY_BOUNDS: dict[str, Any] = {
    "max_load_per_cpu": Annotated[float, Range(0, 1000)],
    "idle_minutes": Annotated[float, Range(0, 7 * 24 * 60)],
    "min_battery_percent": Annotated[float, Range(0, 100)],
    "max_temperature_c": Annotated[float, Range(0, 200)],
    "windows": Annotated[
        list[Annotated[str, Match(f"{_CLOCK}-{_CLOCK}", "HH:MM-HH:MM (e.g. '22:00-06:00')")]],
        Len(0, 100),
    ],
    "max_minutes_per_day": Annotated[float, Range(0, 24 * 60)],
    "override_file": Annotated[str, Len(0, 4096)],
    "check_seconds": Annotated[float, Range(0, 3600, lo_open=True)],
}


@dataclass
class AgentConfig:
    id: Annotated[str, NAME] = "dev-0"
    federation: Annotated[str, NAME] = "demo"
    state_dir: Annotated[str, Len(1, 4096)] = "./fedge-agent-state"
    backend: Annotated[str, OneOf(*BACKENDS)] = "auto"
    # ORT intra-op threads: leave the device's other cores to its owner
    threads: Annotated[int, Range(1, 1024)] = 1
    # share of local rows held out for validation; 1 would leave nothing to train on
    validation_fraction: Annotated[float, Range(0, 1, hi_open=True)] = 0.1
    # PEM public keys; set => signed bundles only
    trusted_keys: Annotated[list[Annotated[str, Len(1, 4096)]], Len(0, 100)] = field(
        default_factory=list
    )
    offer_retry_seconds: Annotated[float, Range(0, MAX_SECONDS, lo_open=True)] = 15.0
    nice: Annotated[int, Range(0, 19)] = 10  # added to the process's nice value (0 = leave it)
    # duty cycle: rest between batches to stay under this (0 would never train)
    max_cpu_percent: Annotated[float, Range(1, 100)] = 100.0
    eligibility: EligibilitySettings = field(default_factory=EligibilitySettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    data: DataSource = field(default_factory=lambda: DataSource(path="data.db"))

    SETTING_BOUNDS: ClassVar[dict[type, dict[str, Any]]] = {EligibilitySettings: ELIGIBILITY_BOUNDS}

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

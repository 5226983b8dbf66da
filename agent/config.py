"""The agent's settings (one TOML file; FEDGE_* and --set override any key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedge.protocol.mqtt_link import MqttSettings
from fedge.protocol.sqlite_samples import DataSource

from .eligibility import EligibilitySettings


@dataclass
class AgentConfig:
    id: str = "dev-0"
    federation: str = "demo"
    state_dir: str = "./fedge-agent-state"
    backend: str = "auto"  # auto | ort-training | ort-portable
    threads: int = 1  # ORT intra-op threads: leave the device's other cores to its owner
    validation_fraction: float = 0.1
    trusted_keys: list[str] = field(default_factory=list)  # PEM public keys; set => signed only
    offer_retry_seconds: float = 15.0
    nice: int = 10  # added to the process's nice value at start (0 = leave it)
    max_cpu_percent: float = 100.0  # duty cycle: rest between batches to stay under this
    eligibility: EligibilitySettings = field(default_factory=EligibilitySettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    data: DataSource = field(default_factory=lambda: DataSource(path="data.db"))

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

"""The orchestrator's settings (one TOML file; FEDGE_* and --set override any key)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedge.protocol.mqtt_link import MqttSettings
from fedge.protocol.sqlite_samples import DataSource


@dataclass
class RoundSettings:
    rounds: int = 10  # committed rounds (model versions) to produce
    min_devices: int = 2  # wait for this many online devices before the first round
    devices_per_round: int = 0  # 0 = every online device
    min_reports: int = 1  # commit a round with at least this many accepted updates
    deadline_seconds: float = 120.0
    local_epochs: int = 1
    batch_size: int = 32
    seed: int = 0
    max_update_norm: float = 0.0  # 0 = no bound; else reject deltas with a larger L2 norm
    keep_deltas: bool = False  # keep each accepted delta after its round commits (audits, tests)


@dataclass
class EvaluationSettings:
    enabled: bool = False
    data: DataSource = field(default_factory=lambda: DataSource(path=""))


@dataclass
class OrchestratorConfig:
    federation: str = "demo"
    client_id: str = "fedge-orchestrator"
    bundle: str = "bundle"  # directory or .fedge archive
    database: str = "orchestrator.db"
    strategy: str = "fedavg"
    trusted_keys: list[str] = field(default_factory=list)
    exit_when_done: bool = True
    mqtt: MqttSettings = field(default_factory=lambda: MqttSettings(username="fedge-orchestrator"))
    rounds: RoundSettings = field(default_factory=RoundSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)

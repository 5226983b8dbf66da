"""The orchestrator's settings (one TOML file; FEDGE_* and --set override any key)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedge.protocol.mqtt_link import MqttSettings
from fedge.protocol.sqlite_samples import DataSource


@dataclass
class RoundSettings:
    rounds: int = 10  # committed rounds (model versions) to produce
    min_devices: int = 2  # wait for this many eligible devices before opening a round
    devices_per_round: int = 0  # the goal: reports to accept per round (0 = every device)
    over_selection: float = 1.0  # invite goal x this (1.3 = 30% spares against dropouts)
    weighted_selection: bool = False  # draw devices proportionally to their sample counts
    target_agents: list[str] = field(default_factory=list)  # glob patterns (groups); [] = all
    target_backends: list[str] = field(default_factory=list)  # e.g. ["ort-training"]; [] = all
    min_reports: int = 1  # commit a round with at least this many accepted updates
    deadline_seconds: float = 120.0
    retry_seconds: float = 5.0  # after an abandoned round, wait this long before the next
    check_back_seconds: float = 30.0  # pace steering hint for devices not in the round
    local_epochs: int = 1
    batch_size: int = 32
    max_samples: int = 0  # 0 = all local rows
    learning_rate: float = 0.0  # 0 = the bundle's own
    compression: str = ""  # "" | "int8" | "topk": how agents encode deltas
    topk_fraction: float = 0.0
    clip_norm: float = 0.0  # client-level DP clipping on the device (0 = off)
    noise_multiplier: float = 0.0
    seed: int = 0
    max_update_norm: float = 0.0  # 0 = no bound; else reject deltas with a larger L2 norm
    # a participant offline this long counts as dropped (the round may close without it)
    offline_grace_seconds: float = 10.0
    keep_deltas: bool = False  # keep each accepted delta after its round commits (audits, tests)
    # federated evaluation: after every N committed rounds, one round in which the devices
    # evaluate that model version on their validation rows (0 = never)
    evaluate_every: int = 0


@dataclass
class StrategyOptions:
    """Options of every strategy; each strategy takes the ones its constructor names."""

    server_lr: float = 1.0  # fedavg, fedavgm, fedprox, median, trimmed_mean, krum
    momentum: float = 0.9  # fedavgm
    proximal_mu: float = 0.01  # fedprox
    eta: float = 0.03  # fedadam, fedyogi, fedadagrad: server learning rate
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity (epsilon)
    trim_fraction: float = 0.2  # trimmed_mean: share cut from each end
    byzantine: int = 1  # krum: assumed number of bad updates
    keep: int = 0  # krum: updates kept (1 = Krum, 0 = n - byzantine)


@dataclass
class EvaluationSettings:
    enabled: bool = False
    data: DataSource = field(default_factory=lambda: DataSource(path=""))


@dataclass
class MetricsSettings:
    port: int = 0  # Prometheus text exposition on http://host:port/metrics; 0 = off
    host: str = "127.0.0.1"


@dataclass
class OrchestratorConfig:
    federation: str = "demo"
    client_id: str = "fedge-orchestrator"
    bundle: str = "bundle"  # directory or .fedge archive
    database: str = "orchestrator.db"
    strategy: str = "fedavg"  # see fedge.orchestrator.strategies.STRATEGIES
    strategy_options: StrategyOptions = field(default_factory=StrategyOptions)
    trusted_keys: list[str] = field(default_factory=list)
    exit_when_done: bool = True
    mqtt: MqttSettings = field(default_factory=lambda: MqttSettings(username="fedge-orchestrator"))
    rounds: RoundSettings = field(default_factory=RoundSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

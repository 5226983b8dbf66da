"""The orchestrator's settings (one TOML file; FEDGE_* and --set override any key).

Every key declares its range or allowed values, and the keys a round task carries use the
wire's own field types (protocol.messages), so a config the orchestrator loads never makes
a task its agents refuse. ``load_settings`` refuses anything else at start, in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fedge.protocol.errors import ConfigError
from fedge.protocol.fields import (
    MAX_INLINE_BYTES,
    MAX_NAME,
    MAX_PARTICIPANTS,
    MAX_ROUND,
    MAX_SECONDS,
    NAME,
    Fraction,
    InlineSize,
    Len,
    NonNegative,
    OneOf,
    Port,
    Range,
    Samples,
    Seconds,
    WeightDecay,
)
from fedge.protocol.messages import (
    BatchSize,
    Compression,
    LearningRate,
    LocalEpochs,
    ProximalMu,
    Seed,
)
from fedge.protocol.mqtt_link import MqttSettings
from fedge.protocol.sqlite_samples import DataSource

from .buffered_config import MODES, BufferedSettings
from .device_budget import DeviceLimits
from .strategies import STRATEGIES

Count = Annotated[int, Range(1, 10**6)]
Patterns = Annotated[list[Annotated[str, Len(1, 256)]], Len(0, 1000)]
Rate = Annotated[float, Range(0, 1e3, lo_open=True)]
Beta = Annotated[float, Range(0, 1, hi_open=True)]


@dataclass
class RoundSettings:
    rounds: Annotated[int, Range(1, MAX_ROUND)] = 10  # committed rounds (model versions)
    min_devices: Count = 2  # wait for this many eligible devices before opening a round
    # the goal: reports to accept per round (0 = every device)
    devices_per_round: Annotated[int, Range(0, MAX_PARTICIPANTS)] = 0
    over_selection: Annotated[float, Range(1, 10)] = 1.0  # invite goal x this (1.3 = 30% spares)
    weighted_selection: bool = False  # draw devices proportionally to their sample counts
    target_agents: Patterns = field(default_factory=list)  # glob patterns (groups); [] = all
    target_backends: Patterns = field(default_factory=list)  # e.g. ["ort-training"]; [] = all
    min_reports: Count = 1  # commit a round with at least this many accepted updates
    deadline_seconds: Annotated[float, Range(0, MAX_SECONDS, lo_open=True)] = 120.0
    retry_seconds: Seconds = 5.0  # after an abandoned round, wait this long before the next
    check_back_seconds: Seconds = 30.0  # pace steering hint for devices not in the round
    local_epochs: LocalEpochs = 1
    batch_size: BatchSize = 32
    max_samples: Samples = 0  # 0 = all local rows
    learning_rate: LearningRate = 0.0  # 0 = the bundle's own
    # the client optimizer, one the bundle carries ("" = its default, the first it lists);
    # checked against the bundle at start (optimizer_check.py)
    optimizer: Annotated[str, Len(0, MAX_NAME)] = ""
    weight_decay: WeightDecay = -1.0  # -1 = the bundle's own; AdamW only (SGD has none)
    compression: Compression = ""  # "" | "int8" | "topk": how agents encode deltas
    topk_fraction: Fraction = 0.0
    clip_norm: NonNegative = 0.0  # client-level DP clipping on the device (0 = off)
    noise_multiplier: NonNegative = 0.0
    seed: Seed = 0
    max_update_norm: NonNegative = 0.0  # 0 = no bound; else reject deltas with a larger L2 norm
    # a participant offline this long counts as dropped (the round may close without it)
    offline_grace_seconds: Seconds = 10.0
    keep_deltas: bool = False  # keep each accepted delta after its round commits (audits, tests)
    # federated evaluation: after every N committed rounds, one round in which the devices
    # evaluate that model version on their validation rows (0 = never)
    evaluate_every: Annotated[int, Range(0, MAX_ROUND)] = 0
    # federated standardization: before the first training round, one statistics round in
    # which devices report per-feature count, sum and sum of squares; the run then trains on
    # (x - mean) / std (docs/data.md)
    standardize: bool = False
    # objects up to this size skip the pull round trip: the global parameters are pushed to
    # each participant with the task, a delta may come inline in its offer (0 = always pull)
    inline_max_bytes: InlineSize = MAX_INLINE_BYTES
    # with at least this many participants, those pushed parameters go out once, retained on
    # round/params (every device may read round/#), not once per participant (0 = never)
    shared_params_from: Annotated[int, Range(0, 10**6)] = 100
    # the open round's validated deltas kept decoded, up to this many MiB, so the close adds
    # them without reading and decoding them again (0 = always read back: least memory, for a
    # small broker host; the model is the same to the bit either way)
    decoded_deltas_mib: Annotated[int, Range(0, 65536)] = 128

    def validate(self) -> None:
        """Combinations that would stall a run or mislead (each key alone is in range)."""
        if self.compression == "topk" and self.topk_fraction <= 0:
            raise ConfigError(
                "rounds.topk_fraction must be in (0, 1] with compression 'topk', "
                f"got {self.topk_fraction}"
            )
        if self.devices_per_round and self.min_reports > self.devices_per_round:
            raise ConfigError(
                f"rounds.min_reports ({self.min_reports}) must be <= rounds.devices_per_round "
                f"({self.devices_per_round}): no round could ever commit"
            )
        invited = self.devices_per_round * self.over_selection
        if invited > MAX_PARTICIPANTS:
            raise ConfigError(
                f"rounds.devices_per_round x rounds.over_selection must be <= "
                f"{MAX_PARTICIPANTS} (the invitations one round task carries), got {invited:g}"
            )
        if self.standardize and self.clip_norm > 0:
            raise ConfigError(
                "rounds.standardize cannot be combined with client-level DP (rounds.clip_norm "
                "> 0): the statistics of raw features have no known bound, so no noise scale "
                "would protect them; standardize the stored features instead, or turn DP off"
            )
        if self.weight_decay < 0 and self.weight_decay != -1:
            raise ConfigError(
                f"rounds.weight_decay must be >= 0, or -1 for the bundle's own; got "
                f"{self.weight_decay}"
            )
        if self.noise_multiplier > 0 and self.clip_norm <= 0:
            raise ConfigError(
                "rounds.noise_multiplier needs rounds.clip_norm > 0 (the noise is scaled by "
                f"the clipping norm), got clip_norm {self.clip_norm}"
            )


@dataclass
class StrategyOptions:
    """Options of every strategy; each strategy takes the ones its constructor names."""

    server_lr: Rate = 1.0  # fedavg, fedavgm, fedprox, median, trimmed_mean, krum
    momentum: Beta = 0.9  # fedavgm
    proximal_mu: ProximalMu = 0.01  # fedprox
    eta: Rate = 0.03  # fedadam, fedyogi, fedadagrad: server learning rate
    beta1: Beta = 0.9
    beta2: Beta = 0.99
    tau: Annotated[float, Range(0, 1, lo_open=True)] = 1e-3  # adaptivity (epsilon)
    # trimmed_mean: share cut from each end (0.5 would cut everything)
    trim_fraction: Annotated[float, Range(0, 0.5, hi_open=True)] = 0.2
    byzantine: Annotated[int, Range(0, 10**6)] = 1  # krum: assumed number of bad updates
    keep: Annotated[int, Range(0, 10**6)] = 0  # krum: updates kept (1 = Krum, 0 = n - byzantine)


@dataclass
class RobustSettings:
    """Robust weighting (orchestrator/robust_weighting.py), on by default; 0 turns a defence off.

    A device's weight is capped by its registered sample count, ``max_claimed_samples`` and
    ``sample_cap_multiple`` x the round's median claim; every update is scaled down to at most
    ``norm_multiple`` x the median norm of the last ``norm_window`` rounds."""

    sample_cap_multiple: Annotated[float, Range(0, 1e6)] = 1.5
    max_claimed_samples: Samples = 10_000_000
    norm_multiple: Annotated[float, Range(0, 1e6)] = 1.5
    norm_floor: Annotated[float, Range(0, 1e12, lo_open=True)] = 1e-6
    norm_window: Annotated[int, Range(1, 1000)] = 5

    def validate(self) -> None:
        if 0 < self.sample_cap_multiple < 1:
            raise ConfigError(
                "robust.sample_cap_multiple must be 0 (off) or >= 1, "
                f"got {self.sample_cap_multiple}"
            )


@dataclass
class EvaluationSettings:
    enabled: bool = False
    data: DataSource = field(default_factory=lambda: DataSource(path=""))

    def validate(self) -> None:
        if self.enabled and not self.data.path:
            raise ConfigError("evaluation.data.path must name a SQLite file when enabled")


@dataclass
class MetricsSettings:
    port: Port = 0  # Prometheus text exposition on http://host:port/metrics; 0 = off
    host: Annotated[str, Len(1, 255)] = "127.0.0.1"


@dataclass
class OrchestratorConfig:
    federation: Annotated[str, NAME] = "demo"
    client_id: Annotated[str, Len(1, 256)] = "fedge-orchestrator"
    bundle: Annotated[str, Len(1, 4096)] = "bundle"  # directory or .fedge archive
    database: Annotated[str, Len(1, 4096)] = "orchestrator.db"
    strategy: Annotated[str, OneOf(*STRATEGIES)] = "fedavg"
    strategy_options: StrategyOptions = field(default_factory=StrategyOptions)
    trusted_keys: Annotated[list[Annotated[str, Len(1, 4096)]], Len(0, 100)] = field(
        default_factory=list
    )
    exit_when_done: bool = True
    # Continue the latest finished run of this bundle up to rounds.rounds model versions
    # (instead of starting a new run at version 0); `fedge orchestrator --continue`.
    continue_run: bool = False
    mqtt: MqttSettings = field(default_factory=lambda: MqttSettings(username="fedge-orchestrator"))
    rounds: RoundSettings = field(default_factory=RoundSettings)
    robust: RobustSettings = field(default_factory=RobustSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    limits: DeviceLimits = field(default_factory=DeviceLimits)  # per-device budgets
    # "async": buffered asynchronous aggregation (FedBuff), see docs/async.md
    mode: Annotated[str, OneOf(*MODES)] = "sync"
    buffered: BufferedSettings = field(default_factory=BufferedSettings)

    def validate(self) -> None:
        if self.rounds.standardize and self.mode != "sync":
            raise ConfigError(
                'rounds.standardize needs mode = "sync": buffered asynchronous runs have no '
                "statistics round yet"
            )

"""The scripting API behind ``import fedge``: configs, agents and orchestrators in-process.

The CLI's ``fedge agent`` / ``fedge orchestrator`` are these same calls plus signal handling and
logging setup. Configs are the typed dataclasses the TOML files load into
(:class:`~fedge.agent.config.AgentConfig`, :class:`~fedge.orchestrator.config.OrchestratorConfig`),
built by the one settings loader so file, ``FEDGE_*`` environment and ``key=value`` overrides
work exactly as on the command line. Nothing here imports torch: exporting is
``fedge.export_bundle`` (the exporter's own function).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedge.agent.config import AgentConfig
    from fedge.agent.daemon import Agent
    from fedge.orchestrator.config import OrchestratorConfig
    from fedge.orchestrator.server import Orchestrator

log = logging.getLogger(__name__)

ConfigPath = str | Path


def load_agent_config(
    path: ConfigPath | None = None, *, overrides: Sequence[str] = ()
) -> AgentConfig:
    """An agent's settings: defaults, then the TOML file, ``FEDGE_*`` variables, ``overrides``.

    ``overrides`` are ``"key=value"`` strings, as ``--set`` takes them (``"data.path=d.db"``).
    """
    from fedge.agent.config import AgentConfig
    from fedge.protocol.settings import load_settings

    return load_settings(AgentConfig, path, overrides=list(overrides))


def load_orchestrator_config(
    path: ConfigPath | None = None, *, overrides: Sequence[str] = ()
) -> OrchestratorConfig:
    """An orchestrator's settings, loaded like :func:`load_agent_config`."""
    from fedge.orchestrator.config import OrchestratorConfig
    from fedge.protocol.settings import load_settings

    return load_settings(OrchestratorConfig, path, overrides=list(overrides))


@dataclass(frozen=True)
class RoundSummary:
    """One round of a run as the orchestrator's database recorded it."""

    round: int
    kind: str  # "train" or "evaluate"
    state: str  # "committed", "abandoned", "evaluated", ...
    model_version: int  # the version the round started from
    reports: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_orchestrator` returns: the run's id, database and round history."""

    run_id: str
    database: Path
    rounds: list[RoundSummary]

    @property
    def committed(self) -> list[RoundSummary]:
        """The rounds that produced a model version, in order."""
        return [r for r in self.rounds if r.state == "committed"]

    @property
    def final_metrics(self) -> dict[str, Any]:
        """The metrics of the last committed round (``{}`` if none committed)."""
        return dict(self.committed[-1].metrics) if self.committed else {}


@dataclass(frozen=True)
class AgentResult:
    """What :func:`run_agent` returns when the agent stops."""

    agent_id: str
    rounds_trained: int


def _orchestrator_config(
    config: OrchestratorConfig | ConfigPath, overrides: Sequence[str]
) -> OrchestratorConfig:
    if isinstance(config, (str, Path)):
        return load_orchestrator_config(config, overrides=overrides)
    if overrides:
        from fedge.protocol.errors import ConfigError

        raise ConfigError("overrides apply to a config file; set the attributes of a config object")
    return config


def _agent_config(config: AgentConfig | ConfigPath, overrides: Sequence[str]) -> AgentConfig:
    if isinstance(config, (str, Path)):
        return load_agent_config(config, overrides=overrides)
    if overrides:
        from fedge.protocol.errors import ConfigError

        raise ConfigError("overrides apply to a config file; set the attributes of a config object")
    return config


def run_orchestrator(
    config: OrchestratorConfig | ConfigPath, *, overrides: Sequence[str] = ()
) -> RunResult:
    """Run rounds until the configured number of model versions exists; return the history.

    Blocks (Ctrl-C stops it cleanly). With ``exit_when_done = false`` it only returns when
    interrupted. ``config`` is a config object or a TOML file path (then ``overrides`` apply).
    """
    cfg = _orchestrator_config(config, overrides)
    orch = _build_orchestrator(cfg)
    try:
        orch.run()
    except KeyboardInterrupt:
        orch.stop()
    return run_history(cfg.database, orch.run_id or None)


def _build_orchestrator(cfg: OrchestratorConfig) -> Orchestrator:
    """The orchestrator ``fedge orchestrator`` runs: over MQTT (the same steps as its CLI)."""
    from fedge.orchestrator.server import Orchestrator
    from fedge.protocol.mqtt_link import MqttLink

    return Orchestrator(cfg, transport=MqttLink(cfg.mqtt, client_id=cfg.client_id))


def run_history(database: ConfigPath, run_id: str | None = None) -> RunResult:
    """The round history of ``run_id`` (default: the latest run) from an orchestrator database."""
    from fedge.orchestrator.history import open_store, pick_run

    store = open_store(str(database))
    try:
        chosen = pick_run(store, run_id)
        records = store.rounds(chosen)
    finally:
        store.close()
    rounds = [
        RoundSummary(
            round=r.round,
            kind=r.kind,
            state=r.state,
            model_version=r.model_version,
            reports=r.reports,
            metrics=dict(r.metrics),
        )
        for r in records
    ]
    return RunResult(run_id=chosen, database=Path(database), rounds=rounds)


def run_agent(
    config: AgentConfig | ConfigPath,
    *,
    overrides: Sequence[str] = (),
    max_rounds: int | None = None,
) -> AgentResult:
    """Run a device agent until stopped (Ctrl-C) or until it trained ``max_rounds`` rounds.

    Unlike ``fedge agent`` it does not renice the process (``nice`` is a process-wide
    setting; a script decides that itself).
    """
    agent = _build_agent(_agent_config(config, overrides))
    try:
        agent.run(max_rounds=max_rounds)
    except KeyboardInterrupt:
        agent.stop()
    return AgentResult(agent.cfg.id, agent.rounds_done)


def _build_agent(cfg: AgentConfig) -> Agent:
    """The agent ``fedge agent`` runs: the configured backend, over MQTT with its Last Will.

    The same three steps as ``fedge.agent.cli.run_agent`` (without renicing the process).
    """
    from fedge.agent.backends import create_backend
    from fedge.agent.daemon import Agent
    from fedge.agent.status_message import offline_status
    from fedge.protocol.mqtt_link import MqttLink

    backend = create_backend(cfg.backend, threads=cfg.threads)
    link = MqttLink(cfg.mqtt, client_id=cfg.id, will=offline_status(cfg, backend.name))
    return Agent(cfg, transport=link, backend=backend)


class RunningAgent:
    """An agent working in a background thread: :func:`start_agent` returns one.

    ``stop()`` asks it to finish, ``join()`` waits and returns its :class:`AgentResult` (or
    raises what the agent raised). As a context manager it stops and joins on exit.
    """

    def __init__(self, config: AgentConfig, *, max_rounds: int | None = None) -> None:
        self._agent = _build_agent(config)
        self._max_rounds = max_rounds
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._work, name=f"fedge-agent-{config.id}", daemon=True
        )
        self._thread.start()

    @property
    def agent_id(self) -> str:
        return self._agent.cfg.id

    def _work(self) -> None:
        try:
            self._agent.run(max_rounds=self._max_rounds)
        except BaseException as exc:  # re-raised by join() in the caller's thread
            log.debug("agent %s stopped with %r", self.agent_id, exc)
            self._error = exc

    def stop(self) -> None:
        """Ask the agent to stop after its current step (returns at once)."""
        self._agent.stop()

    def join(self, timeout: float | None = 30.0) -> AgentResult:
        """Wait for the agent to finish; raise its error, or TimeoutError if it is still busy."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"agent {self.agent_id} still running after {timeout} s")
        if self._error is not None:
            raise self._error
        return AgentResult(self.agent_id, self._agent.rounds_done)

    def __enter__(self) -> RunningAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.join()


def start_agent(
    config: AgentConfig | ConfigPath,
    *,
    overrides: Sequence[str] = (),
    max_rounds: int | None = None,
) -> RunningAgent:
    """Start an agent in a background thread (for scripts and notebooks); see RunningAgent."""
    return RunningAgent(_agent_config(config, overrides), max_rounds=max_rounds)

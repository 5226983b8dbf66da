"""A real Agent through whole rounds on the in-memory transport, as a fixture.

``world`` gives (broker, clock, scripted orchestrator, make_agent, sensors file): a real state
database, a real toy bundle and SQLite data file, the orchestrator scripted in-process, a fake
clock. ``pump`` delivers messages both ways until nothing moves. Used by the agent's round
tests (tests/unit/test_agent_rounds.py) and its round-cost tests (test_agent_round_cost.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedge.agent.config import AgentConfig
from fedge.agent.daemon import Agent
from fedge.agent.eligibility import EligibilitySettings
from fedge.demo.data import write_samples_sqlite
from fedge.protocol.sqlite_samples import DataSource
from fedge.protocol.transport import InMemoryBroker
from support.scripted_orchestrator import FakeBackend, FakeClock, ScriptedOrchestrator
from support.toy_bundle import write_toy_bundle


def pump(agent: Agent, orch: ScriptedOrchestrator, *, rounds: int = 50) -> None:
    """Deliver messages both ways and tick the agent until nothing moves."""
    for _ in range(rounds):
        moved = orch.process()
        while (item := agent.transport.get(0)) is not None:
            agent.handle(*item)
            moved = True
        agent.tick()
        moved = orch.process() or moved
        if not moved and agent.transport.pending() == 0:
            return
    raise AssertionError("the agent and the orchestrator never went quiet")


@pytest.fixture
def world(tmp_path: Path):
    rng = np.random.default_rng(0)
    data = write_samples_sqlite(
        tmp_path / "data.db",
        rng.random((40, 3), dtype=np.float32),
        rng.integers(0, 2, 40).astype(np.int64),
    )
    broker = InMemoryBroker()
    clock = FakeClock()
    orch = ScriptedOrchestrator(broker, write_toy_bundle(tmp_path / "bundle"), clock)
    sensors = tmp_path / "sensors.json"
    sensors.write_text("{}")

    def make_agent(backend: FakeBackend | None = None, agent_id: str = "dev-0") -> Agent:
        cfg = AgentConfig(
            id=agent_id,
            state_dir=str(tmp_path / f"state-{agent_id}"),
            validation_fraction=0.25,
            eligibility=EligibilitySettings(override_file=str(sensors)),
            data=DataSource(path=str(data)),
        )
        agent = Agent(
            cfg, transport=broker.client(agent_id), backend=backend or FakeBackend(), clock=clock
        )
        agent.start()
        return agent

    return broker, clock, orch, make_agent, sensors

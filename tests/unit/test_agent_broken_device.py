"""A device whose disk fails under it: the round logic on the in-memory transport.

(The same failures on real processes: tests/integration/test_hostile_agent.py.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from support.scripted_orchestrator import FakeBackend, FakeClock, ScriptedOrchestrator
from support.toy_bundle import write_toy_bundle

from fedge.agent.config import AgentConfig
from fedge.agent.daemon import Agent
from fedge.agent.state import StateError
from fedge.demo.data import write_samples_sqlite
from fedge.protocol.sqlite_samples import DataSource
from fedge.protocol.transport import InMemoryBroker


def _world(tmp_path: Path, backend: FakeBackend) -> tuple[Agent, ScriptedOrchestrator]:
    rng = np.random.default_rng(0)
    data = write_samples_sqlite(
        tmp_path / "data.db",
        rng.random((40, 3), dtype=np.float32),
        rng.integers(0, 2, 40).astype(np.int64),
    )
    broker, clock = InMemoryBroker(), FakeClock()
    orch = ScriptedOrchestrator(broker, write_toy_bundle(tmp_path / "bundle"), clock)
    cfg = AgentConfig(id="dev-0", state_dir=str(tmp_path / "state"), data=DataSource(str(data)))
    agent = Agent(cfg, transport=broker.client("dev-0"), backend=backend, clock=clock)
    agent.start()
    return agent, orch


def _pump(agent: Agent, orch: ScriptedOrchestrator) -> None:
    for _ in range(50):
        moved = orch.process()
        while (item := agent.transport.get(0)) is not None:
            agent.handle(*item)
            moved = True
        agent.tick()
        if not (orch.process() or moved):
            return
    raise AssertionError("never went quiet")


def test_the_abort_goes_out_when_the_journal_cannot_be_written(tmp_path: Path, monkeypatch) -> None:
    agent, orch = _world(tmp_path, FakeBackend())

    def full_disk(*_a, **_k) -> None:
        raise StateError("agent state write failed (database or disk is full)")

    monkeypatch.setattr(agent.state, "set_journal", full_disk)
    orch.publish_task(orch.task())
    _pump(agent, orch)
    assert [(a.round, a.reason) for a in orch.aborts] == [
        (1, "agent state write failed (database or disk is full)")
    ]
    _pump(agent, orch)  # the process remembers: no second attempt, no second abort
    assert len(orch.aborts) == 1 and not orch.offers


def test_a_bundle_damaged_on_disk_is_fetched_again_after_a_failed_round(tmp_path: Path) -> None:
    state = {"damage": True}

    def on_step(n: int) -> None:
        if state["damage"]:
            state["damage"] = False
            cached = tmp_path / "state" / "bundles" / orch.bundle_hash
            for f in cached.iterdir():
                if f.is_file() and f.name != "manifest.json":
                    f.write_bytes(b"bad sector")
            raise RuntimeError("ONNX Runtime: invalid model")

    agent, orch = _world(tmp_path, FakeBackend(on_step))
    orch.publish_task(orch.task())
    _pump(agent, orch)
    assert [a.round for a in orch.aborts] == [1]
    assert not (tmp_path / "state" / "bundles" / orch.bundle_hash).exists()  # dropped
    orch.publish_task(orch.task(2))
    _pump(agent, orch)
    assert sum(r.sha256 == orch.bundle_ref.sha256 for r in orch.requests) >= 2  # fetched again
    assert [o.round for o in orch.offers] == [2]  # and trained

"""Rows that do not fit the bundle are refused before anything trains or evaluates on them.

The agent (a real Agent over the in-memory transport, as in test_agent_rounds.py) aborts the
round with the contract's reason and never calls the backend; the orchestrator's central
evaluator refuses its test table when it is built (at start), not in the middle of a run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.agent_world import pump
from support.scripted_orchestrator import FakeBackend, FakeClock, ScriptedOrchestrator
from support.toy_bundle import write_toy_bundle

from fedge.agent.config import AgentConfig
from fedge.agent.daemon import Agent
from fedge.agent.eligibility import EligibilitySettings
from fedge.demo.data import write_samples_sqlite
from fedge.orchestrator.evaluation import CentralEvaluator
from fedge.protocol.bundle import load_bundle
from fedge.protocol.sqlite_samples import DataError, DataSource
from fedge.protocol.transport import InMemoryBroker


def _rows(path: Path, labels: list[int], features: int = 3) -> Path:
    x = np.random.default_rng(0).random((len(labels), features), dtype=np.float32)
    return write_samples_sqlite(path, x, np.array(labels, dtype=np.int64))


@pytest.mark.parametrize(
    "labels, features, reason",
    [
        (
            [0, 1] * 10 + [12],
            3,
            "1 rows have a label outside the model's 2 classes (row 21: 12): a multiclass "
            "label is a class id 0..1",
        ),
        (
            [0, 1] * 10,
            1,
            "features match 1 column (f0) but the model's input 'input' needs 3: "
            "check data.features",
        ),
    ],
)
def test_the_agent_aborts_the_round_with_the_contracts_reason(tmp_path, labels, features, reason):
    data = _rows(tmp_path / "data.db", labels, features)
    broker, clock = InMemoryBroker(), FakeClock()
    orch = ScriptedOrchestrator(broker, write_toy_bundle(tmp_path / "bundle"), clock)
    sensors = tmp_path / "sensors.json"
    sensors.write_text("{}")
    cfg = AgentConfig(
        id="dev-0",
        state_dir=str(tmp_path / "state"),
        eligibility=EligibilitySettings(override_file=str(sensors)),
        data=DataSource(path=str(data)),
    )
    backend = FakeBackend()
    agent = Agent(cfg, transport=broker.client("dev-0"), backend=backend, clock=clock)
    agent.start()
    orch.publish_task(orch.task())
    pump(agent, orch)
    (abort,) = orch.aborts
    assert abort.reason.startswith("local data problem: the data in ")
    assert abort.reason.endswith(reason)
    assert orch.offers == [] and backend.steps == 0  # nothing trained on the bad rows
    assert agent.state.journal_entry("run-1", 1)[0] == "aborted"


def test_the_central_evaluator_refuses_a_bad_test_table_when_built(tmp_path):
    bundle = load_bundle(write_toy_bundle(tmp_path / "bundle"))
    good = _rows(tmp_path / "good.db", [0, 1] * 5)
    evaluator = CentralEvaluator(bundle, DataSource(path=str(good)))
    assert evaluator.x.shape == (10, 3) and evaluator.y.dtype == np.int64
    bad = _rows(tmp_path / "bad.db", [0, 1, 12, 1])
    with pytest.raises(DataError) as err:
        CentralEvaluator(bundle, DataSource(path=str(bad)))
    assert str(err.value).startswith("central evaluation table ([evaluation.data]): the data in")
    assert "1 rows have a label outside the model's 2 classes (row 3: 12)" in str(err.value)

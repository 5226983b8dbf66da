"""Federated standardization on the device and on the wire: the statistics a real Agent reports
(over its SQLite rows, after feature_scale), the rows it trains on once the task carries the
run's mean and std, its refusals (client DP, overflowing values), and the worst-case sizes of
the messages that carry statistics (under the 64 KiB control-message limit)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from support.agent_world import pump
from support.scripted_orchestrator import FakeBackend, FakeClock, ScriptedOrchestrator
from support.toy_bundle import write_toy_bundle

from fedge.agent.config import AgentConfig
from fedge.agent.daemon import Agent
from fedge.agent.eligibility import EligibilitySettings
from fedge.protocol.fields import MAX_FEATURES
from fedge.protocol.messages import (
    MAX_CONTROL_BYTES,
    BlobRef,
    RoundTask,
    Standardization,
    StatsReport,
    TrainConfig,
)
from fedge.protocol.sqlite_samples import DataSource
from fedge.protocol.standardization import (
    StatisticsError,
    combine,
    local_stats,
    standardize,
)
from fedge.protocol.transport import InMemoryBroker

RAW = np.array(
    [[0.001, 12.0, 3500.0], [0.004, 9.5, 1200.0], [0.002, 17.25, 800.0], [0.003, 11.0, 4100.0]]
)


def write_rows(path: Path, x: np.ndarray) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE samples (f0 REAL, f1 REAL, f2 REAL, label INTEGER)")
    conn.executemany(
        "INSERT INTO samples VALUES (?,?,?,?)", [(*map(float, r), i % 2) for i, r in enumerate(x)]
    )
    conn.commit()
    conn.close()
    return path


class RecordingBackend(FakeBackend):
    """Remembers the features it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[np.ndarray] = []

    def _train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        self.seen.append(np.array(x))
        return super()._train_step(x, y)


@pytest.fixture
def world(tmp_path: Path):
    broker, clock = InMemoryBroker(), FakeClock()
    orch = ScriptedOrchestrator(broker, write_toy_bundle(tmp_path / "bundle"), clock)
    sensors = tmp_path / "sensors.json"
    sensors.write_text("{}")

    def make_agent(x: np.ndarray, backend: FakeBackend | None = None, scale: float = 1.0):
        cfg = AgentConfig(
            id="dev-0",
            state_dir=str(tmp_path / "state"),
            validation_fraction=0.0,
            eligibility=EligibilitySettings(override_file=str(sensors)),
            data=DataSource(path=str(write_rows(tmp_path / "data.db", x)), feature_scale=scale),
        )
        agent = Agent(
            cfg, transport=broker.client("dev-0"), backend=backend or FakeBackend(), clock=clock
        )
        agent.start()
        return agent

    return orch, make_agent


def test_local_stats_and_combine_match_numpy_over_the_union():
    parts = [RAW[:1], RAW[1:3], RAW[3:]]
    mean, std, rows = combine([local_stats(p) for p in parts])
    np.testing.assert_allclose(mean, RAW.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, RAW.std(axis=0), rtol=1e-9)
    assert rows == 4
    z = standardize(RAW, mean, std)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=0), 1, rtol=1e-9)
    _, std_const, _ = combine([local_stats(np.ones((5, 2)))])
    assert all(s > 0 for s in std_const)  # a constant feature: std floored, no division by 0


def test_values_whose_squares_overflow_are_a_clear_error():
    with pytest.raises(StatisticsError, match="not finite for feature 1.*data.feature_scale"):
        local_stats(np.array([[1.0, 1e200], [2.0, 3e200]]))


def test_an_agent_reports_the_statistics_of_its_rows_after_feature_scale(world):
    orch, make_agent = world
    backend = FakeBackend()
    agent = make_agent(RAW, backend, scale=0.5)
    orch.publish_task(orch.task(config=TrainConfig(statistics_only=True)))
    pump(agent, orch)
    (report,) = orch.stats
    scaled = RAW * 0.5
    assert report.num_samples == 4 and report.count == [4, 4, 4]
    np.testing.assert_allclose(report.sum, scaled.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(report.sumsq, (scaled**2).sum(axis=0), rtol=1e-12)
    assert backend.steps == 0 and not orch.offers  # no training, no delta
    assert agent.state.journal_status("run-1", 1) == "evaluated"


def test_an_agent_trains_on_the_standardized_rows_the_task_names(world):
    orch, make_agent = world
    backend = RecordingBackend()
    agent = make_agent(RAW, backend)
    mean, std, _ = combine([local_stats(RAW)])
    task = orch.task(standardize=Standardization(mean, std), config=TrainConfig(batch_size=4))
    orch.publish_task(task)
    pump(agent, orch)
    assert len(orch.offers) == 1
    (x,) = backend.seen
    order = np.argsort(x[:, 2])  # the batch order is shuffled
    want = standardize(RAW, mean, std).astype(np.float32)
    np.testing.assert_allclose(x[order], want[np.argsort(want[:, 2])], rtol=1e-6, atol=1e-6)


def test_an_agent_refuses_statistics_under_client_dp_and_says_why(world):
    orch, make_agent = world
    agent = make_agent(RAW)
    cfg = TrainConfig(statistics_only=True, clip_norm=1.0, noise_multiplier=1.0)
    orch.publish_task(orch.task(config=cfg))
    pump(agent, orch)
    assert not orch.stats
    (abort,) = orch.aborts
    assert "client-level DP is on" in abort.reason


def test_an_agent_with_overflowing_values_aborts_the_statistics_round_with_the_reason(world):
    orch, make_agent = world
    agent = make_agent(RAW * np.array([1.0, 1.0, 1e155]))
    orch.publish_task(orch.task(config=TrainConfig(statistics_only=True)))
    pump(agent, orch)
    assert not orch.stats
    (abort,) = orch.aborts
    assert "local data problem" in abort.reason and "not finite for feature 2" in abort.reason


def test_worst_case_statistics_messages_fit_a_control_message():
    worst = -1.2345678901234567e-300  # the longest float64 repr
    report = StatsReport(
        "m" * 64, "a" * 64, "r" * 128, 10**9, 10**9, 10**9,
        [10**9] * MAX_FEATURES, [worst] * MAX_FEATURES, [-worst] * MAX_FEATURES,
    )  # fmt: skip
    assert len(report.encode()) < MAX_CONTROL_BYTES * 0.7
    ref = BlobRef("a" * 64, 10**6, 2)
    task = RoundTask(
        "r" * 128, 10**9, 10**9, "open", "a" * 64, ref, ref,
        participants=[f"device-{i:04d}" for i in range(1000)],
        standardize=Standardization([worst] * MAX_FEATURES, [-worst] * MAX_FEATURES),
    )  # fmt: skip
    assert len(task.encode()) < MAX_CONTROL_BYTES


def test_a_forged_report_near_the_float64_limit_is_refused_not_combined():
    # Found by trying it: sums of 1e308 overflowed the Cauchy-Schwarz check (inf > inf is
    # False), so the report was counted and the run's mean became inf.
    from fedge.protocol.standardization import FeatureStats, report_problem

    honest = FeatureStats([3, 3], [3.0, 21.0], [3.0, 155.0])
    assert report_problem(honest, 2, 3) == ""
    huge = FeatureStats([3, 3], [1e308, 1e308], [1e308, 1e308])
    assert "feature 0: values too large to standardize" in report_problem(huge, 2, 3)
    forged_sum = FeatureStats([3, 3], [3.0, 1e300], [3.0, 155.0])
    assert "feature 1: the sum of squares is smaller" in report_problem(forged_sum, 2, 3)
    with pytest.raises(StatisticsError, match="feature 0.*data.feature_scale"):
        local_stats(np.array([[2e100], [3e100]]))  # squares finite, but above the bound

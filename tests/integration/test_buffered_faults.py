"""Buffered asynchronous runs survive kill -9 and broker restarts (real processes, Mosquitto).

Each test runs Mosquitto, an orchestrator process in ``mode = "async"`` and agent processes,
then reads the orchestrator's database: every version exists once, each version applied
exactly ``buffer_size`` deltas, a slot's delta is stored (and applied) once, and deltas that
were buffered when the orchestrator died are applied after its restart.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support import polling
from support.fleet import Fleet, agent_config, orchestrator_config
from support.polling import query

pytestmark = pytest.mark.integration

K = 3


@pytest.fixture(scope="module")
def digits_bundle(digits_bundle_factory):
    return digits_bundle_factory("sgd", 0.05)


def wait_for(what: str, cond, fleet: Fleet, timeout: float = 90.0, every: float = 0.02):
    return polling.wait_for(what, cond, fleet, timeout, every)  # async rounds take longer


def buffered_slots(db: Path) -> list[int]:
    return [r[0] for r in query(db, "SELECT slot FROM async_updates WHERE committed IS NULL")]


def journal_states(state: Path) -> dict[int, str]:
    return dict(query(state / "agent.db", "SELECT round, status FROM journal"))


def start_orchestrator(fleet: Fleet, broker, bundle: Path, db: Path, versions: int) -> None:
    cfg = orchestrator_config(
        broker,
        bundle,
        db,
        None,
        {"rounds": versions, "local_epochs": 1, "batch_size": 16, "keep_deltas": True},
    )
    cfg["mode"] = "async"
    cfg["buffered"] = {
        "buffer_size": K,
        "max_concurrency": 3,
        "slot_seconds": 60.0,
        "max_staleness": 20,
        "staleness": "polynomial",
        "retry_after": 0.3,
    }
    fleet.start("orchestrator", "orchestrator", cfg)


def check_exactly_once(db: Path, versions: int) -> list[tuple]:
    """Versions 0..N exist once; each applied exactly K deltas; no slot stored twice."""
    assert [v for (v,) in query(db, "SELECT version FROM model_versions ORDER BY version")] == list(
        range(versions + 1)
    )
    rows = query(db, "SELECT slot, agent_id, sha256, committed FROM async_updates ORDER BY slot")
    applied = [c for *_, c in rows if c is not None]
    assert sorted(applied) == sorted(v for v in range(1, versions + 1) for _ in range(K)), rows
    # one delta per slot (the primary key) and never the same delta under two slots
    shas = [sha for _, _, sha, _ in rows]
    assert len(shas) == len(set(shas)), rows
    used = query(db, "SELECT COUNT(*) FROM async_slots WHERE state='used'")[0][0]
    assert used == len(rows)
    return rows


def test_kill_9_orchestrator_mid_buffer_and_agent_mid_training(
    mosquitto, digits_federation, digits_bundle, tmp_path
):
    fleet = Fleet(tmp_path)
    db = tmp_path / "orchestrator.db"
    states = [tmp_path / f"state-{i}" for i in range(3)]
    data = digits_federation.device_paths
    # dev-0 trains slowly (so it can be killed mid-training), dev-2 slower still (so the
    # buffer holds fewer than K deltas for a while: the window to kill the orchestrator in)
    slow = {"max_cpu_percent": 15.0}
    cfg0 = agent_config("dev-0", mosquitto, data[0], states[0], **slow)
    try:
        fleet.start("dev-0", "agent", cfg0)
        fleet.start("dev-1", "agent", agent_config("dev-1", mosquitto, data[1], states[1]))
        fleet.start(
            "dev-2",
            "agent",
            agent_config("dev-2", mosquitto, data[2], states[2], max_cpu_percent=5.0),
        )
        start_orchestrator(fleet, mosquitto, digits_bundle, db, versions=3)

        # agent kill -9 while it trains a slot; restarted, it trains that slot again
        slot0 = wait_for(
            "dev-0 training a slot",
            lambda: [s for s, st in journal_states(states[0]).items() if st == "training"],
            fleet,
        )[0]
        time.sleep(0.2)
        fleet.kill("dev-0")
        fleet.start("dev-0", "agent", cfg0)

        # orchestrator kill -9 with deltas buffered but not committed
        kept = wait_for("a partly full buffer", lambda: buffered_slots(db), fleet)
        fleet.kill("orchestrator")
        assert 0 < len(kept) < K
        assert query(db, "SELECT MAX(version) FROM model_versions")[0][0] == 0 or kept
        time.sleep(1.0)  # agents keep offering and asking meanwhile
        start_orchestrator(fleet, mosquitto, digits_bundle, db, versions=3)
        assert fleet.wait("orchestrator", timeout=150) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()

    rows = check_exactly_once(db, 3)
    committed = {slot: c for slot, _, _, c in rows}
    assert all(committed[s] is not None for s in kept), (kept, rows)  # the buffer survived
    assert any(agent == "dev-0" for _, agent, _, _ in rows), "dev-0 never got a delta in"
    # the slot dev-0 was killed in was trained again (same slot) or expired: never half-counted
    assert journal_states(states[0]).get(slot0) in ("acked", "training", "rejected", "expired")
    for i in range(3):
        assert "Traceback" not in fleet.logs(f"dev-{i}"), fleet.logs(f"dev-{i}")
    assert "Traceback" not in fleet.logs("orchestrator")


def test_broker_restart_mid_run(mosquitto, digits_federation, digits_bundle, tmp_path):
    fleet = Fleet(tmp_path)
    db = tmp_path / "orchestrator.db"
    data = digits_federation.device_paths
    try:
        for i in range(3):
            fleet.start(
                f"dev-{i}",
                "agent",
                agent_config(f"dev-{i}", mosquitto, data[i], tmp_path / f"s{i}"),
            )
        start_orchestrator(fleet, mosquitto, digits_bundle, db, versions=4)
        wait_for(
            "version 1",
            lambda: query(db, "SELECT 1 FROM model_versions WHERE version=1"),
            fleet,
        )
        mosquitto.restart()
        assert fleet.wait("orchestrator", timeout=150) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()
    check_exactly_once(db, 4)

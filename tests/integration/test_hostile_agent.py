"""A broken device: its cached bundle is damaged on disk, or its disk fills up, mid-run.

Real processes: Mosquitto, the orchestrator and two agents. A damaged bundle used to make
ONNX Runtime fail every round until a restart (the cached copy was verified only once); a
full disk made the agent log "aborted" and crash before sending the abort.
"""

from __future__ import annotations

import resource
import sqlite3
import time
from pathlib import Path

import pytest
from support.fleet import Fleet, agent_config, orchestrator_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def digits_bundle(digits_bundle_factory):
    return digits_bundle_factory("sgd", 0.05)


def _query(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def _wait(what: str, cond, fleet: Fleet, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}\n{fleet.all_logs()}")


def _start(fleet, mosquitto, digits_federation, digits_bundle, tmp_path, rounds: int):
    data = digits_federation.device_paths
    states = [tmp_path / "s0", tmp_path / "s1"]
    for i, state in enumerate(states):
        fleet.start(f"dev-{i}", "agent", agent_config(f"dev-{i}", mosquitto, data[i], state))
    base = {"rounds": rounds, "min_devices": 2, "min_reports": 1, "deadline_seconds": 30}
    base |= {"local_epochs": 1, "batch_size": 16}
    db = tmp_path / "orchestrator.db"
    fleet.start(
        "orchestrator",
        "orchestrator",
        orchestrator_config(mosquitto, digits_bundle, db, None, base),
    )
    return db, states


def _dev0_updates(db: Path) -> list[tuple[int, str, str]]:
    return _query(
        db, "SELECT round, status, reason FROM updates WHERE agent_id='dev-0' ORDER BY round"
    )


def test_a_bundle_damaged_while_running_is_fetched_again(
    mosquitto, digits_federation, digits_bundle, tmp_path
) -> None:
    fleet = Fleet(tmp_path)
    try:
        db, states = _start(fleet, mosquitto, digits_federation, digits_bundle, tmp_path, 4)
        _wait("round 1 committed", lambda: _query(db, "SELECT 1 FROM rounds WHERE round=1 "
                                                  "AND state='committed'"), fleet)  # fmt: skip
        (cached,) = [p for p in (states[0] / "bundles").iterdir() if not p.name.startswith(".")]
        for f in cached.iterdir():
            if f.suffix == ".onnx" or f.name == "checkpoint":
                f.write_bytes(b"damaged by a bad SD card")
        assert fleet.wait("orchestrator", timeout=90) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()
    updates = _dev0_updates(db)
    failed = [r for r, status, _ in updates if status == "aborted"]
    assert failed, f"the damaged bundle never failed a round: {updates}\n{fleet.all_logs()}"
    later = [r for r, status, _ in updates if status == "accepted" and r > failed[0]]
    # Before: every round after the damage failed the same way, until a restart.
    assert later, f"dev-0 never trained again after the damage: {updates}"
    assert "failed verification" in fleet.logs("dev-0")  # the re-check found the damage


def test_a_full_disk_still_sends_the_abort(
    mosquitto, digits_federation, digits_bundle, tmp_path
) -> None:
    """A real write failure, not a mock: RLIMIT_FSIZE (prlimit) on the running agent makes
    every write past byte 1 of any file fail with EFBIG, which SQLite reports as "database or
    disk is full" - what a full disk does (a tiny tmpfs needs mount rights tests do not have).
    """
    fleet = Fleet(tmp_path)
    try:
        db, states = _start(fleet, mosquitto, digits_federation, digits_bundle, tmp_path, 2)
        _wait("dev-0's round 1 acked", lambda: _query(states[0] / "agent.db",
              "SELECT 1 FROM journal WHERE round=1 AND status='acked'"), fleet)  # fmt: skip
        resource.prlimit(fleet.procs["dev-0"].pid, resource.RLIMIT_FSIZE, (1, 1))
        assert fleet.wait("orchestrator", timeout=90) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()
    round2 = [u for u in _dev0_updates(db) if u[0] == 2]
    # Before: the agent logged "aborted", then died on the journal write: no abort was sent.
    assert round2 and round2[0][1] == "aborted", f"{round2}\n{fleet.all_logs()}"
    assert "disk" in round2[0][2] and "agent.db" in round2[0][2], round2  # names the cause

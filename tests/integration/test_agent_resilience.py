"""The agent survives kill -9, broker restarts, eligibility changes and bad data (real processes).

Every test runs Mosquitto, an orchestrator process and agent processes, then reads the
orchestrator's database: each round must count exactly one accepted update per device that
reported, and aborts must be counted, never lost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from support.fleet import Fleet, agent_config, orchestrator_config
from support.polling import query, wait_for

from fedge.protocol.compression import compression_of, decode_delta
from fedge.protocol.tensors import decode_tensors

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits_bundle(digits_bundle_factory):
    return digits_bundle_factory("sgd", 0.05)


def journal(state: Path, round_no: int) -> str:
    rows = query(state / "agent.db", "SELECT status FROM journal WHERE round=?", (round_no,))
    return rows[0][0] if rows else ""


def outbox_rounds(state: Path) -> list[int]:
    return [r[0] for r in query(state / "agent.db", "SELECT round FROM outbox")]


def round_state(db: Path, round_no: int) -> str:
    rows = query(db, "SELECT state FROM rounds WHERE round=?", (round_no,))
    return rows[0][0] if rows else ""


def check_one_update_per_device(db: Path, rounds: int, devices: list[str]) -> None:
    """Every round committed with exactly one accepted update per device, counted once."""
    conn = sqlite3.connect(db)
    recs = conn.execute("SELECT round, state, reports FROM rounds ORDER BY round").fetchall()
    assert [(r, s) for r, s, _ in recs] == [(i, "committed") for i in range(1, rounds + 1)]
    for round_no, _state, reports in recs:
        agents = conn.execute(
            "SELECT agent_id FROM updates WHERE round=? AND status='accepted' ORDER BY agent_id",
            (round_no,),
        ).fetchall()
        assert [a for (a,) in agents] == devices, round_no
        assert reports == len(devices), round_no
    conn.close()


def _orchestrator(fleet, broker, bundle, db, rounds: dict) -> None:
    base = {"min_devices": 2, "deadline_seconds": 60, "local_epochs": 1, "batch_size": 16}
    fleet.start(
        "orchestrator", "orchestrator", orchestrator_config(broker, bundle, db, None, base | rounds)
    )


def test_kill_9_mid_training_and_mid_upload(mosquitto, digits_federation, digits_bundle, tmp_path):
    fleet = Fleet(tmp_path)
    db = tmp_path / "orchestrator.db"
    states = [tmp_path / f"state-{i}" for i in range(3)]
    data = digits_federation.device_paths
    # dev-0 trains slowly (15 % CPU budget) so the test can kill it mid-training; dev-2 is
    # slower still (3 %) and keeps each round open while dev-0 restarts (a round whose other
    # participants all answered closes as soon as the killed device's Last Will arrives)
    cfg0 = agent_config("dev-0", mosquitto, data[0], states[0], max_cpu_percent=15.0)
    try:
        fleet.start("dev-0", "agent", cfg0)
        fleet.start("dev-1", "agent", agent_config("dev-1", mosquitto, data[1], states[1]))
        fleet.start(
            "dev-2",
            "agent",
            agent_config("dev-2", mosquitto, data[2], states[2], max_cpu_percent=3.0),
        )
        _orchestrator(
            fleet,
            mosquitto,
            digits_bundle,
            db,
            {"rounds": 2, "min_devices": 3, "min_reports": 3, "local_epochs": 30},
        )

        # round 1: kill -9 while training, restart; it must train again and report once
        wait_for("dev-0 training round 1", lambda: journal(states[0], 1) == "training", fleet)
        time.sleep(0.3)
        fleet.kill("dev-0")
        assert journal(states[0], 1) == "training" and outbox_rounds(states[0]) == []
        fleet.start("dev-0", "agent", cfg0)

        # round 2: freeze the orchestrator once dev-0 has the round's parameters, so the
        # delta sits in dev-0's outbox, offered but not fetched; kill -9 dev-0 there
        wait_for("dev-0 training round 2", lambda: journal(states[0], 2) == "training", fleet, 90)
        orch = fleet.procs["orchestrator"]
        os.kill(orch.pid, signal.SIGSTOP)
        try:
            wait_for("dev-0 outbox holds round 2", lambda: outbox_rounds(states[0]) == [2], fleet)
            time.sleep(0.2)  # the offer is published; no ack can come while frozen
            fleet.kill("dev-0")
            (sha_offered,) = query(states[0] / "agent.db", "SELECT sha256 FROM outbox")[0]
            fleet.start("dev-0", "agent", cfg0)
        finally:
            os.kill(orch.pid, signal.SIGCONT)
        assert fleet.wait("orchestrator", timeout=90) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()

    check_one_update_per_device(db, 2, ["dev-0", "dev-1", "dev-2"])
    accepted = query(db, "SELECT sha256 FROM updates WHERE round=2 AND agent_id='dev-0'")
    assert accepted == [(sha_offered,)]  # the delta saved before the kill is the one counted
    assert journal(states[0], 1) == "acked" and journal(states[0], 2) == "acked"
    assert outbox_rounds(states[0]) == []  # acked deltas leave the outbox
    assert "Traceback" not in fleet.logs("dev-0")


def test_broker_restart_new_rows_and_topk_compression(
    mosquitto, digits_federation, digits_bundle, tmp_path
):
    fleet = Fleet(tmp_path)
    db = tmp_path / "orchestrator.db"
    data0 = tmp_path / "dev-0.db"
    shutil.copy(digits_federation.device_paths[0], data0)
    try:
        fleet.start("dev-0", "agent", agent_config("dev-0", mosquitto, data0, tmp_path / "s0"))
        fleet.start(
            "dev-1",
            "agent",
            agent_config("dev-1", mosquitto, digits_federation.device_paths[1], tmp_path / "s1"),
        )
        rounds = {"rounds": 3, "min_reports": 2, "keep_deltas": True}
        # deltas travel top-k compressed (10 %), the rest kept on the device (error feedback)
        rounds |= {"compression": "topk", "topk_fraction": 0.1}
        _orchestrator(fleet, mosquitto, digits_bundle, db, rounds)
        wait_for("round 1 committed", lambda: round_state(db, 1) == "committed", fleet)
        # the device's owner adds rows (the agent must read them next round)
        conn = sqlite3.connect(data0)
        cols = [r[1] for r in conn.execute("PRAGMA table_info(samples)") if r[1] != "id"]
        names = ", ".join(cols)
        conn.execute(f"INSERT INTO samples ({names}) SELECT {names} FROM samples")
        conn.commit()
        conn.close()
        mosquitto.restart()
        assert fleet.wait("orchestrator", timeout=90) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()

    check_one_update_per_device(db, 3, ["dev-0", "dev-1"])
    samples = dict(
        query(
            db,
            "SELECT round, num_samples FROM updates WHERE agent_id='dev-0' AND status='accepted'",
        )
    )
    assert samples[2] == samples[3] and samples[2] >= 2 * samples[1] - 1, samples
    for (blob,) in query(db, "SELECT delta FROM updates WHERE status='accepted'"):
        assert compression_of(blob) == "topk"
        delta = decode_delta(blob)
        nonzero = sum(int((v != 0).sum()) for v in delta.values())
        total = sum(v.size for v in delta.values())
        assert 0.09 * total <= nonzero <= 0.11 * total + len(delta)
    (residual,) = query(tmp_path / "s0" / "agent.db", "SELECT blob FROM residual")[0]
    assert any(np.abs(v).sum() > 0 for v in decode_tensors(residual).values())


def test_eligibility_flip_and_missing_table_abort_cleanly(
    mosquitto, digits_federation, digits_bundle, tmp_path
):
    fleet = Fleet(tmp_path)
    db = tmp_path / "orchestrator.db"
    data = digits_federation.device_paths
    sensors = tmp_path / "sensors.json"
    sensors.write_text("{}")
    state0 = tmp_path / "s0"
    try:
        fleet.start(
            "dev-0",
            "agent",
            agent_config(
                "dev-0",
                mosquitto,
                data[0],
                state0,
                max_cpu_percent=15.0,
                eligibility={"override_file": str(sensors), "max_temperature_c": 70.0},
            ),
        )
        bad = agent_config("dev-1", mosquitto, data[1], tmp_path / "s1")
        bad["data"]["table"] = "readings"
        fleet.start("dev-1", "agent", bad)
        fleet.start("dev-2", "agent", agent_config("dev-2", mosquitto, data[2], tmp_path / "s2"))
        _orchestrator(
            fleet,
            mosquitto,
            digits_bundle,
            db,
            {"rounds": 1, "min_devices": 3, "min_reports": 1, "local_epochs": 3},
        )
        wait_for("dev-0 training", lambda: journal(state0, 1) == "training", fleet)
        sensors.write_text(json.dumps({"temperature_c": 85.5}))  # the Pi heats up mid-round
        assert fleet.wait("orchestrator", timeout=90) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()

    ((state, reports, aborted),) = query(db, "SELECT state, reports, aborted FROM rounds")
    assert (state, reports, aborted) == ("committed", 1, 2), fleet.all_logs()
    accepted = query(db, "SELECT agent_id FROM updates WHERE status='accepted'")
    assert accepted == [("dev-2",)]
    aborts = dict(query(db, "SELECT agent_id, reason FROM updates WHERE status='aborted'"))
    assert aborts["dev-0"] == "training stopped: no longer eligible: too hot: 85.5 °C >= 70 °C"
    assert aborts["dev-1"].startswith("local data problem: table 'readings' not found in ")
    assert aborts["dev-1"].endswith("; tables are: samples")
    # the status told the orchestrator the device is not eligible (and why)
    ((eligible, reason),) = query(db, "SELECT eligible, reason FROM devices WHERE agent_id='dev-0'")
    assert eligible == 0 and "too hot: 85.5" in reason
    log0, log1 = fleet.logs("dev-0"), fleet.logs("dev-1")
    assert "training stopped: no longer eligible: too hot: 85.5 °C >= 70 °C" in log0
    assert "local data problem: table 'readings' not found" in log1
    assert "Traceback" not in log0 + log1
    orch = fleet.logs("orchestrator")
    assert "dev-1 will not report: local data problem: table 'readings' not found" in orch
    assert "dev-0 will not report: training stopped: no longer eligible" in orch


def test_sigterm_mid_training_is_trained_again_after_restart(
    mosquitto, digits_federation, digits_bundle, tmp_path
):
    """Issue #6: SIGTERM (systemd or docker stop) mid-training used to journal the round
    'aborted' and tell the orchestrator so: the restarted agent then never trained it. Now the
    agent stops at the next batch, journals the round 'interrupted', says nothing to the
    orchestrator, exits 0, and trains the round again when it comes back."""
    fleet = Fleet(tmp_path)
    db = tmp_path / "orchestrator.db"
    states = [tmp_path / f"state-{i}" for i in range(3)]
    data = digits_federation.device_paths
    # as in the kill -9 test: dev-0 slow enough to be stopped mid-training, dev-2 slower still
    # so the round stays open while dev-0 restarts
    cfg0 = agent_config("dev-0", mosquitto, data[0], states[0], max_cpu_percent=15.0)
    try:
        fleet.start("dev-0", "agent", cfg0)
        fleet.start("dev-1", "agent", agent_config("dev-1", mosquitto, data[1], states[1]))
        fleet.start(
            "dev-2",
            "agent",
            agent_config("dev-2", mosquitto, data[2], states[2], max_cpu_percent=3.0),
        )
        _orchestrator(
            fleet,
            mosquitto,
            digits_bundle,
            db,
            {"rounds": 1, "min_devices": 3, "min_reports": 3, "local_epochs": 30},
        )
        wait_for("dev-0 training round 1", lambda: journal(states[0], 1) == "training", fleet)
        time.sleep(0.3)
        stopped_at = time.monotonic()
        fleet.procs["dev-0"].send_signal(signal.SIGTERM)
        assert fleet.wait("dev-0", timeout=30) == 0, fleet.logs("dev-0")
        stop_seconds = time.monotonic() - stopped_at
        assert journal(states[0], 1) == "interrupted" and outbox_rounds(states[0]) == []
        assert stop_seconds < 5.0, stop_seconds  # the batch loop ends promptly
        fleet.start("dev-0", "agent", cfg0)
        assert fleet.wait("orchestrator", timeout=120) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()

    check_one_update_per_device(db, 1, ["dev-0", "dev-1", "dev-2"])
    assert query(db, "SELECT agent_id FROM updates WHERE status='aborted'") == []
    assert journal(states[0], 1) == "acked"
    log0 = fleet.logs("dev-0")
    assert "will be trained again after a restart" in log0 and "Traceback" not in log0

"""Rounds that finish despite faulty devices, on a real Mosquitto; each test reads the round
records the orchestrator wrote.

- scripted fake agents (real MQTT, crafted updates): duplicate delivery, NaN update,
  wrong-shape update, update for an old round, update for an old model version, a device that
  never answers (deadline), over-selection with a goal, abandon-and-retry;
- real agent and orchestrator processes: an agent killed mid-round, the orchestrator killed
  with SIGKILL mid-round and restarted.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time

import numpy as np
import pytest
from support.fake_agent import FakeAgent
from support.fleet import Fleet, agent_config, orchestrator_config

from fedge.orchestrator.config import OrchestratorConfig, RobustSettings, RoundSettings
from fedge.orchestrator.server import Orchestrator
from fedge.orchestrator.store import Store
from fedge.protocol.bundle import load_bundle
from fedge.protocol.mqtt_link import MqttLink, MqttSettings
from fedge.protocol.tensors import decode_tensors

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits_bundle(digits_bundle_factory):
    return digits_bundle_factory("adamw", 0.01)


def _good(template, value):
    return {n: np.full(a.shape, value, a.dtype) for n, a in template.items()}


def test_faulty_devices_are_recorded_and_rounds_still_finish(
    mosquitto, digits_bundle, tmp_path, capsys
):
    bundle = load_bundle(digits_bundle)
    template = bundle.initial_parameters()
    user = "fedge-orchestrator"
    cfg = OrchestratorConfig(
        federation=mosquitto.federation,
        client_id=user,
        database=str(tmp_path / "o.db"),
        mqtt=MqttSettings(
            url=mosquitto.url, username=user, password=mosquitto.users[user], protocol="5"
        ),
        rounds=RoundSettings(
            rounds=2,
            min_devices=3,
            devices_per_round=2,  # the goal
            over_selection=1.5,  # invite 3 for a goal of 2
            min_reports=2,
            deadline_seconds=4,
            retry_seconds=0.5,
            keep_deltas=True,
        ),
        # exact FedAvg arithmetic below: with two updates of norms 1:3, the default clip
        # (1.5x the lower median) would scale the larger one (tests/unit/test_robust_weighting.py)
        robust=RobustSettings(sample_cap_multiple=0, max_claimed_samples=0, norm_multiple=0),
    )
    orch = Orchestrator(cfg, transport=MqttLink(cfg.mqtt, client_id=user), bundle=bundle)
    thread = threading.Thread(target=orch.run, daemon=True)
    agents = {
        f"dev-{i}": FakeAgent(mosquitto.url, f"dev-{i}", mosquitto.users[f"dev-{i}"]).start()
        for i in range(3)
    }
    a0, a1, a2 = agents.values()
    nan = _good(template, 0.01)
    first = next(iter(nan))
    nan[first] = nan[first].copy()
    nan[first].flat[0] = np.nan
    shape = _good(template, 0.01)
    shape[first] = np.zeros((3, 3), np.float32)
    handled: set[int] = set()
    late_sent = False
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while thread.is_alive() and time.monotonic() < deadline:
            for a in agents.values():
                a.pump(0.02)
            task = a0.task
            if task is None or task.state != "open" or task.round in handled:
                if task is not None and task.round >= 3 and not late_sent:
                    a1.offer(_good(template, 0.5), round_no=2)  # round 2 closed: late
                    late_sent = True
                continue
            handled.add(task.round)
            if task.round == 1:  # good + duplicate delivery, NaN, wrong shape -> abandoned
                offer = a0.offer(_good(template, 0.01))
                _wait(lambda: a0.acks, a0)
                a0.resend(offer)
                a1.offer(nan)
                a2.offer(shape)
            elif task.round == 2:  # two good reports reach the goal; dev-1 stays silent
                a0.offer(_good(template, 0.01))
                a2.offer(_good(template, 0.03))
            elif task.round == 3:  # one good, one for an old model version, one silent
                a0.offer(_good(template, 0.01))
                a2.offer(_good(template, 0.02), model_version=0)
            else:
                for i, a in enumerate(agents.values()):
                    a.offer(_good(template, 0.01 * (i + 1)))
        thread.join(10)
        assert not thread.is_alive(), "the orchestrator did not finish its 2 rounds"
    finally:
        orch.stop()
        for a in agents.values():
            a.stop()

    store = Store(cfg.database)
    run_id = store.latest_run_id()
    r1, r2, r3, r4 = store.rounds(run_id)
    assert (r1.state, r1.reports, r1.rejected, r1.duplicates, r1.goal) == ("abandoned", 1, 2, 1, 2)
    assert len(r1.participants) == 3 and "min_reports" in r1.note
    reasons = {
        u["agent_id"]: u["reason"] for u in store.updates(run_id, 1) if u["status"] != "accepted"
    }
    assert "non-finite" in reasons["dev-1"] and "shape" in reasons["dev-2"], reasons
    # goal of 2 reached: closed at once, without waiting for the silent dev-1
    assert (r2.state, r2.reports, r2.late) == ("committed", 2, 1)
    assert r2.closed - r2.opened < 3.5
    # deadline: dev-1 silent, dev-2's update was for model v0 while the round trains v1
    assert (r3.state, r3.reports, r3.rejected) == ("abandoned", 1, 1)
    assert r3.closed - r3.opened >= 4 - 0.1
    (bad,) = [u for u in store.updates(run_id, 3) if u["status"] == "rejected"]
    assert bad["agent_id"] == "dev-2" and "model v0" in bad["reason"]
    assert (r4.state, r4.reports) == ("committed", 2)
    # v1 is v0 plus the mean of the two accepted round-2 deltas (0.01 and 0.03)
    v0 = decode_tensors(store.version_params(run_id, 0))
    v1 = decode_tensors(store.version_params(run_id, 1))
    for n in v0:
        np.testing.assert_allclose(v1[n] - v0[n], 0.02, atol=1e-6)
    store.close()

    # operations on the same database: history table, and version 1 as a standalone ONNX file
    from fedge.cli import main
    from fedge.protocol.inference import InferenceRunner
    from fedge.protocol.ort_runtime import import_onnxruntime

    assert main(["history", "--database", cfg.database]) == 0
    assert "abandoned" in capsys.readouterr().out
    out = tmp_path / "v1.onnx"
    args = ["model", "export", "--database", cfg.database, "--bundle", str(digits_bundle)]
    assert main([*args, "--version", "1", "--out", str(out)]) == 0
    ort = import_onnxruntime()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, InferenceRunner(bundle, v1).run(x), rtol=1e-5, atol=1e-6)


def _wait(cond, agent, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        agent.pump(0.05)


def _round_state(db_path, round_no):
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
        row = db.execute(
            "SELECT state, reports FROM rounds WHERE round=? ORDER BY opened DESC", (round_no,)
        ).fetchone()
        db.close()
        return row
    except sqlite3.Error:
        return None


def _poll(cond, fleet, timeout):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, fleet.all_logs()
        time.sleep(0.05)


def test_agent_killed_and_orchestrator_killed_mid_round(
    mosquitto, digits_federation, digits_bundle, tmp_path
):
    fleet = Fleet(tmp_path)
    db_path = tmp_path / "orchestrator.db"
    orch_cfg = orchestrator_config(
        mosquitto,
        digits_bundle,
        db_path,
        None,
        {
            "rounds": 3,
            "min_devices": 3,
            "min_reports": 2,
            "deadline_seconds": 60,
            "local_epochs": 1,
            "batch_size": 32,
            "keep_deltas": True,
        },
    )
    try:
        configs = {
            f"dev-{i}": agent_config(
                f"dev-{i}", mosquitto, data, tmp_path / f"state-{i}", offer_retry_seconds=1.0
            )
            for i, data in enumerate(digits_federation.device_paths)
        }
        # the orchestrator first: a new database knows no device, and RabbitMQ replays no
        # retained status to its agent/+/status subscription (docs/brokers.md), so devices
        # must say "online" after it subscribed (on Mosquitto the order does not matter)
        fleet.start("orchestrator", "orchestrator", orch_cfg)
        _poll(lambda: "new run" in fleet.logs("orchestrator"), fleet, 60)
        for name, cfg in configs.items():
            fleet.start(name, "agent", cfg)
        # an agent killed mid-round (SIGKILL: the broker publishes its Last Will "offline"),
        # restarted once the round is over (a device that rebooted)
        _poll(lambda: _round_state(db_path, 1) is not None, fleet, 60)
        fleet.kill("dev-2")
        _poll(lambda: (_round_state(db_path, 1) or ("open",))[0] != "open", fleet, 60)
        # the orchestrator killed mid-round, after it accepted an update, then restarted. Round
        # 2 must still be open when it dies: dev-0 and dev-1 are frozen (SIGSTOP) until then,
        # so only dev-2 can report (with fast rounds the second report used to land in the
        # few ms between the poll and the kill, and no round was open at the restart). Round 2
        # cannot open before dev-2 is back (min_devices 3), so they are frozen before it opens.
        frozen = [fleet.procs[name].pid for name in ("dev-0", "dev-1")]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            fleet.start("dev-2", "agent", configs["dev-2"])
            _poll(lambda: (_round_state(db_path, 2) or ("", 0))[1] >= 1, fleet, 60)
            fleet.kill("orchestrator")
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        fleet.start("orchestrator", "orchestrator", orch_cfg)
        assert fleet.wait("orchestrator", timeout=90) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()

    db = sqlite3.connect(db_path)
    (run_id,) = db.execute("SELECT run_id FROM runs WHERE state='finished'").fetchone()
    rounds = db.execute(
        "SELECT round, model_version, state, reports, dropped, opened, closed, participants "
        "FROM rounds WHERE run_id=? ORDER BY round",
        (run_id,),
    ).fetchall()
    logs = fleet.all_logs()
    assert [r[2] for r in rounds] == ["committed"] * 3, (rounds, logs)
    assert [r[1] for r in rounds] == [0, 1, 2]
    versions = [
        v for (v,) in db.execute("SELECT version FROM model_versions WHERE run_id=?", (run_id,))
    ]
    assert sorted(versions) == [0, 1, 2, 3]
    # round 1: dev-2 died; its Last Will closed the round before the 60 s deadline
    r1 = rounds[0]
    assert "dev-2" in json.loads(r1[7])
    if r1[3] == 2:  # dev-2 had not reported before it was killed
        assert r1[4] == 1 and r1[6] - r1[5] < 45, (r1, logs)
    # no update counted twice: each round's counter equals its distinct accepted rows
    for round_no, _v, _s, reports, *_ in rounds:
        rows = db.execute(
            "SELECT agent_id FROM updates WHERE run_id=? AND round=? AND status='accepted'",
            (run_id, round_no),
        ).fetchall()
        assert reports == len(rows) == len({r[0] for r in rows}) >= 2, (round_no, rows)
    assert "was open at restart; continuing it" in fleet.logs("orchestrator")

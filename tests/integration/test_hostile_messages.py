"""Hostile wire messages on a real Mosquitto: out-of-range integers never reach state or storage.

A device publishes, retained, a status with ``num_samples`` = 10^20, an offer for round 2^70
and an evaluation report for a huge round; later a late offer with ``blob.size`` = 2^63. The
orchestrator process (before the fix: OverflowError from SQLite, on every restart, because the
messages are retained) logs a warning naming the field, still runs its rounds with honest
devices, and survives a restart with the status still on the broker (retained messages on
up topics it clears unread; sent live, they are refused by their bounds). The same for an agent
process and a retained RoundTask for round 2^70.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from support.fake_agent import FakeAgent
from support.fleet import Fleet, agent_config, orchestrator_config
from support.mqtt_peer import Peer
from support.toy_bundle import write_toy_bundle

from fedge.protocol.bundle import load_bundle
from fedge.protocol.messages import (
    BlobRef,
    EvalReport,
    RoundTask,
    Status,
    TrainConfig,
    UpdateOffer,
)
from fedge.protocol.topics import Topics

pytestmark = pytest.mark.integration

SHA = "a" * 64
HUGE_SAMPLES = 10**20
HUGE_ROUND = 2**70


def _wait_for(cond, what: str, fleet: Fleet, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}\n{fleet.all_logs()}"
        time.sleep(0.05)


def _alive(fleet: Fleet, name: str) -> bool:
    return fleet.procs[name].poll() is None


def _round_states(db: Path) -> list[tuple[int, str]]:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT round, state FROM rounds ORDER BY round").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


ORCHESTRATOR_WARNINGS = (
    "agent/dev-2/status: status.num_samples must be <= 1000000000, got 100000000000000000000",
    "agent/dev-3/up/msg: update.round must be <= 1000000000, got 1180591620717411303424",
    "agent/dev-4/up/msg: eval.round must be <= 1000000000, got 1180591620717411303424",
)


def test_orchestrator_survives_hostile_retained_messages(mosquitto, tmp_path):
    topics = Topics(mosquitto.federation)
    bundle_dir = write_toy_bundle(tmp_path / "bundle")
    template = load_bundle(bundle_dir).initial_parameters()
    peers = {
        name: Peer(mosquitto.host, mosquitto.port, name, mosquitto.users[name])
        for name in ("dev-2", "dev-3", "dev-4")
    }
    for peer in peers.values():
        peer.wait_connack()
    # encode() does not check bounds: a hostile device can send anything
    peers["dev-2"].publish(
        topics.agent_status("dev-2"),
        Status(agent="dev-2", state="idle", num_samples=HUGE_SAMPLES).encode(),
        retain=True,
    )
    up = {
        "dev-3": UpdateOffer(
            msg_id="m-round", agent="dev-3", run_id="r", round=HUGE_ROUND, model_version=0,
            blob=BlobRef(SHA, 10, 1), num_samples=5,
        ).encode(),
        "dev-4": EvalReport(
            msg_id="m-eval", agent="dev-4", run_id="r", round=HUGE_ROUND, model_version=0,
            num_samples=5, metrics={"val_loss": 1.0},
        ).encode(),
    }  # fmt: skip
    for name, payload in up.items():
        peers[name].publish(topics.agent_up_msg(name), payload, retain=True)

    fleet = Fleet(tmp_path)
    db = tmp_path / "orchestrator.db"
    rounds = {"rounds": 2, "min_devices": 2, "min_reports": 2, "deadline_seconds": 30}
    cfg = orchestrator_config(mosquitto, bundle_dir, db, None, rounds)
    honest = [FakeAgent(mosquitto.url, f"dev-{i}", mosquitto.users[f"dev-{i}"]) for i in (0, 1)]
    try:
        fleet.start("orchestrator", "orchestrator", cfg)
        log = lambda: fleet.logs("orchestrator")  # noqa: E731
        _wait_for(lambda: ORCHESTRATOR_WARNINGS[0] in log(), "the status warning", fleet)
        # retained messages on up topics are cleared unread (docs/security.md, per-device
        # budgets); sent live, the same messages are parsed and refused by their bounds
        for name, payload in up.items():
            peers[name].publish(topics.agent_up_msg(name), payload)
        _wait_for(lambda: all(w in log() for w in ORCHESTRATOR_WARNINGS), "warnings", fleet)
        time.sleep(0.5)
        assert _alive(fleet, "orchestrator"), fleet.all_logs()

        # honest devices still get their rounds; a late offer with blob.size 2^63 in between
        for agent in honest:
            agent.start()
        handled: set[int] = set()
        late_sent = False
        end = time.monotonic() + 60
        while _alive(fleet, "orchestrator") and time.monotonic() < end:
            for agent in honest:
                agent.pump(0.02)
            task = honest[0].task
            if task is None or task.state != "open" or task.round in handled:
                continue
            handled.add(task.round)
            if task.round == 2 and not late_sent:  # round 1 is closed: this offer is late
                late = UpdateOffer(
                    msg_id="m-late", agent="dev-3", run_id=task.run_id, round=1,
                    model_version=0, blob=BlobRef(SHA, 2**63, 1), num_samples=5,
                )  # fmt: skip
                peers["dev-3"].publish(topics.agent_up_msg("dev-3"), late.encode())
                late_sent = True
            for i, agent in enumerate(honest):
                agent.offer(
                    {n: np.full(a.shape, 0.01 * (i + 1), a.dtype) for n, a in template.items()}
                )
        assert fleet.wait("orchestrator", timeout=30) == 0, fleet.all_logs()
        assert _round_states(db) == [(1, "committed"), (2, "committed")], fleet.all_logs()
        assert "update.blob.size must be <= 536870912, got 9223372036854775808" in log()

        # a restart with the hostile status still retained on the broker (the retained up
        # messages were cleared: they are not replayed)
        for agent in honest:
            agent.stop()
        before = log().count(ORCHESTRATOR_WARNINGS[0])
        fleet.start("orchestrator", "orchestrator", cfg)
        _wait_for(
            lambda: (
                all(log().count(w) > before for w in ORCHESTRATOR_WARNINGS[:1])
                and all(log().count(w) >= 2 for w in ORCHESTRATOR_WARNINGS[:1])
            ),
            "the warnings after the restart",
            fleet,
        )
        time.sleep(1.0)
        assert _alive(fleet, "orchestrator"), fleet.all_logs()
        assert "Traceback" not in log(), fleet.all_logs()
        assert all(log().count(w) == 1 for w in ORCHESTRATOR_WARNINGS[1:]), fleet.all_logs()
    finally:
        fleet.stop_all()
        for agent in honest:
            agent.stop()
        for peer in peers.values():
            peer.close()


def test_agent_survives_a_retained_round_task_with_a_huge_round(
    mosquitto, digits_federation, tmp_path
):
    topics = Topics(mosquitto.federation)
    user = mosquitto.orchestrator_user
    orchestrator = Peer(mosquitto.host, mosquitto.port, user, mosquitto.users[user])
    orchestrator.wait_connack()
    task = RoundTask(
        run_id="r", round=HUGE_ROUND, model_version=0, state="open", bundle_hash=SHA,
        bundle=BlobRef(SHA, 10, 1), params=BlobRef(SHA, 10, 1), participants=["dev-0"],
        config=TrainConfig(), deadline=time.time() + 600,
    )  # fmt: skip
    orchestrator.publish(topics.round_current, task.encode(), retain=True)
    warning = "round/current: round.round must be <= 1000000000, got 1180591620717411303424"
    fleet = Fleet(tmp_path)
    cfg = agent_config("dev-0", mosquitto, digits_federation.device_paths[0], tmp_path / "state")
    try:
        for attempt in (1, 2):  # the second start: the task is still retained
            fleet.start("dev-0", "agent", cfg)
            _wait_for(lambda n=attempt: fleet.logs("dev-0").count(warning) >= n, "warning", fleet)
            time.sleep(1.0)
            assert _alive(fleet, "dev-0"), fleet.all_logs()
            fleet.stop_all()
        assert "Traceback" not in fleet.logs("dev-0"), fleet.all_logs()
    finally:
        fleet.stop_all()
        orchestrator.close()

"""Floods from one device on a real Mosquitto: the broker, the link, and the whole federation.

1. The broker (the files ``write_broker_files`` renders, with their queue limits): another
   device's messages must still all reach the orchestrator. Before the limits were sized,
   Mosquitto's default of 1,000 queued messages per client made it log "Outgoing messages are
   being dropped" for the orchestrator and lose the honest device's messages behind the flood.
2. The federation, during a round: a real orchestrator process, 3 honest agent processes, and
   one hostile device with its own credentials, invited to the round, publishing only where its
   ACL lets it (its own status and ``up/#`` topics): 10,000 messages of every kind. The
   orchestrator must stay alive with its memory bounded, commit the round with each honest
   device counted once, write no database row per hostile message and log a bounded number of
   lines. The broker logs every PUBLISH (``log_type all``): the honest agents' own traffic is
   measured from that log, against the per-device budget they must never hit.
"""

from __future__ import annotations

import json
import queue
import re
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psutil
import pytest
from support.fleet import Fleet, agent_config, orchestrator_config

from fedge.orchestrator.device_budget import DeviceLimits
from fedge.protocol.chunks import blob_ref, encode_frame
from fedge.protocol.invitations import Invitation, invites
from fedge.protocol.messages import (
    FetchRequest,
    RoundAbort,
    RoundTask,
    Status,
    UpdateOffer,
    new_msg_id,
    parse_message,
)
from fedge.protocol.tensors import encode_tensors

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FLOOD = 10_000
HONEST = 200  # the other device's messages in the broker test
HOSTILE = "dev-3"
RSS_GROWTH_BOUND = 64 * 1024 * 1024  # the orchestrator's RSS may grow this much in the flood
# orchestrator log lines from the flood on (both rounds, all devices), and those naming the
# hostile device: per summary window at most limits.log_lines per kind, and one summary
LOG_LINES_BOUND = 80
HOSTILE_LINES_BOUND = 40
# rows gained in all tables during both rounds, honest ones included: per round 3 accepted
# updates, the hostile's one refusal and a few late/duplicate records, a round, a version
ROWS_BOUND = 2 * (3 + 1 + 3 + 2)


# ---- the broker: its queue limits ----
def _client(broker, user: str, *, inflight: int = 20) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, broker.users[user])
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    assert connected.wait(5), f"{user} did not connect"
    return client


def test_a_flood_from_one_device_does_not_drop_anothers_messages(mosquitto) -> None:
    p = mosquitto.prefix
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    orch = _client(mosquitto, "fedge-orchestrator")
    subscribed = threading.Event()
    orch.on_subscribe = lambda *_a: subscribed.set()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        time.sleep(0.0002)  # an orchestrator doing a little work per message
        got.put((msg.topic, msg.payload))

    orch.on_message = on_message
    orch.subscribe(f"{p}/agent/+/up/#", qos=1)
    assert subscribed.wait(5)
    hostile = _client(mosquitto, "dev-0", inflight=0)  # no window: as fast as the socket goes
    honest = _client(mosquitto, "dev-1")
    try:
        junk = b"x" * 2000
        for i in range(FLOOD):
            hostile.publish(f"{p}/agent/dev-0/up/msg", junk, qos=1)
            if i % (FLOOD // HONEST) == 0:
                honest.publish(f"{p}/agent/dev-1/up/msg", f"honest-{i}".encode(), qos=1)
        honest.publish(f"{p}/agent/dev-1/up/msg", b"last", qos=1)
        received: list[bytes] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                topic, payload = got.get(timeout=5)
            except queue.Empty:
                break
            if topic.endswith("/dev-1/up/msg"):
                received.append(payload)
                if payload == b"last":
                    break
        assert len(received) == HONEST + 1, (
            f"{HONEST + 1 - len(received)} of the honest device's {HONEST + 1} messages lost\n"
            + mosquitto.log_tail(5)
        )
    finally:
        for client in (hostile, honest, orch):
            client.disconnect()
            client.loop_stop()


def test_the_link_says_which_messages_were_retained(mosquitto) -> None:
    """A device may retain messages on its own up topics (Mosquitto's ACL cannot refuse the
    retain flag per topic): the orchestrator's link must be able to tell them apart."""
    from fedge.protocol.mqtt_link import MqttLink, MqttSettings

    p = mosquitto.prefix
    device = _client(mosquitto, "dev-0")
    device.publish(
        f"{p}/agent/dev-0/up/msg", b"retained-junk", qos=1, retain=True
    ).wait_for_publish(5)
    user = "fedge-orchestrator"
    link = MqttLink(
        MqttSettings(url=mosquitto.url, username=user, password=mosquitto.users[user]), user
    )
    link.subscribe(f"{p}/agent/+/up/#")
    link.start()
    try:
        assert link.wait_connected(5)
        assert link.get(5) == (f"{p}/agent/dev-0/up/msg", b"retained-junk")
        assert link.last_retained
        device.publish(f"{p}/agent/dev-0/up/msg", b"live", qos=1).wait_for_publish(5)
        assert link.get(5) == (f"{p}/agent/dev-0/up/msg", b"live")
        assert not link.last_retained
    finally:
        device.publish(f"{p}/agent/dev-0/up/msg", b"", qos=1, retain=True).wait_for_publish(5)
        device.disconnect()
        device.loop_stop()
        link.stop(timeout=0.5)


# ---- the federation: a hostile participant ----
@pytest.fixture(scope="module")
def digits_bundle(digits_bundle_factory):
    return digits_bundle_factory("adamw", 0.01)


class Hostile:
    """A device with its own credentials that publishes as fast as its socket goes."""

    def __init__(self, broker: Any) -> None:
        self.prefix = broker.prefix
        self.task: RoundTask | None = None
        self.invitation: Invitation | None = None
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=HOSTILE, protocol=mqtt.MQTTv5)
        c.username_pw_set(HOSTILE, broker.users[HOSTILE])
        c.max_inflight_messages_set(0)  # no window
        c.max_queued_messages_set(0)
        connected = threading.Event()
        c.on_connect = lambda *_a: connected.set()
        c.on_message = self._on_message
        c.connect(broker.host, broker.port, keepalive=30)
        c.loop_start()
        assert connected.wait(5), "the hostile device could not connect"
        c.subscribe(f"{self.prefix}/round/current", qos=1)
        c.subscribe(f"{self.prefix}/agent/{HOSTILE}/invite", qos=1)
        self.client = c

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        if msg.payload and msg.topic.endswith("/invite"):
            invitation = parse_message(msg.payload, Invitation)
            assert isinstance(invitation, Invitation)
            self.invitation = invitation
        elif msg.payload:
            task = parse_message(msg.payload, RoundTask)
            assert isinstance(task, RoundTask)
            self.task = task

    def invited(self) -> bool:
        """Whether the open round invited this device (its own retained invitation)."""
        task = self.task
        return task is not None and task.state == "open" and invites(self.invitation, task, HOSTILE)

    def up(self, payload: bytes, sub: str = "msg", *, qos: int = 0, retain: bool = False) -> None:
        self.client.publish(f"{self.prefix}/agent/{HOSTILE}/up/{sub}", payload, qos, retain)

    def status(self) -> None:
        s = Status(agent=HOSTILE, state="idle", backend="ort-training", num_samples=500)
        self.client.publish(f"{self.prefix}/agent/{HOSTILE}/status", s.encode(), 1, True)

    def flood(self, n: int) -> Counter[str]:
        task = self.task
        assert task is not None
        run, rnd, version = task.run_id, task.round, task.model_version
        blob = encode_tensors({"w": np.zeros(4, np.float32)})
        ref = blob_ref(blob)
        dup = UpdateOffer(new_msg_id(), HOSTILE, run, rnd, version, ref, 100, {}).encode()
        big = json.dumps(
            {"type": "update", "msg_id": "m", "agent": HOSTILE, "run_id": run, "round": 10**40}
        ).encode()
        kinds: list[tuple[str, Any]] = [
            ("oversized_integers", lambda i: self.up(big.replace(b'"m"', f'"m{i}"'.encode()))),
            (
                "invented_runs",
                lambda i: self.up(
                    UpdateOffer(new_msg_id(), HOSTILE, f"run-{i}", i, 0, ref, 10**6, {}).encode()
                ),
            ),
            ("duplicate_offers", lambda i: self.up(dup, qos=1)),
            (
                "fetch_256_duplicates",
                lambda i: self.up(
                    FetchRequest(new_msg_id(), HOSTILE, task.params.sha256, [0] * 256).encode()
                ),
            ),
            (
                "retained",
                lambda i: self.up(dup, "msg" if i % 2 else f"r{i % 40}", qos=1, retain=True),
            ),
            ("garbage_json", lambda i: self.up(b'{"type": "update", [[[' + bytes([i % 256]))),
            (
                "aborts",
                lambda i: self.up(
                    RoundAbort(new_msg_id(), HOSTILE, run, rnd + 1 + i, "x").encode()
                ),
            ),
            ("chunks", lambda i: self.up(encode_frame(ref, 0, blob), "chunk")),
        ]
        sent: Counter[str] = Counter()
        for i in range(n):
            name, send = kinds[i % len(kinds)]
            send(i)
            sent[name] += 1
        return sent

    def abort_open_rounds(self, until: Any, timeout: float) -> None:
        """Abort every round it is invited to (so they close without a deadline) until
        ``until()``. An abort the orchestrator dropped (the flood's backlog or rate limit can
        still hold it) is sent again after 3 s while the round stays open: without that, the
        round ran to its 60 s deadline (a CI run took 64 s). A repeat after an accepted abort
        changes nothing (the orchestrator counts one answer per device and round)."""
        sent_at: dict[int, float] = {}
        end = time.monotonic() + timeout
        while not until() and time.monotonic() < end:
            task = self.task
            if task and self.invited():
                if time.monotonic() - sent_at.get(task.round, float("-inf")) >= 3.0:
                    abort = RoundAbort(new_msg_id(), HOSTILE, task.run_id, task.round, "hostile")
                    self.up(abort.encode(), qos=1)
                    sent_at[task.round] = time.monotonic()
            time.sleep(0.1)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _rows(db_path: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        db.close()


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)


def _honest_publishes(broker_log: str, devices: list[str]) -> dict[str, tuple[int, int]]:
    """{device: (PUBLISH packets it sent, most in any one second)} from Mosquitto's log."""
    per_second: dict[str, Counter[int]] = {d: Counter() for d in devices}
    for m in re.finditer(r"^(\d+): Received PUBLISH from (\S+) ", broker_log, re.M):
        if m.group(2) in per_second:
            per_second[m.group(2)][int(m.group(1))] += 1
    return {d: (sum(c.values()), max(c.values(), default=0)) for d, c in per_second.items()}


@pytest.mark.timeout(300)  # the session's bundle export may be this test's setup
def test_a_hostile_device_cannot_crash_stall_or_flood_the_orchestrator(
    mosquitto, digits_federation, digits_bundle, tmp_path
):
    conf = mosquitto.files.conf_path
    conf.write_text(conf.read_text() + "\nlog_type all\n")  # every PUBLISH, for the measure
    mosquitto.restart()
    fleet = Fleet(tmp_path)
    db_path = tmp_path / "orchestrator.db"
    honest = [f"dev-{i}" for i in range(3)]
    hostile = Hostile(mosquitto)
    try:
        hostile.status()  # eligible: the round waits for it and invites it (worst case)
        for name, data in zip(honest, digits_federation.device_paths, strict=True):
            fleet.start(name, "agent", agent_config(name, mosquitto, data, tmp_path / name))
        orch = fleet.start(
            "orchestrator",
            "orchestrator",
            orchestrator_config(
                mosquitto,
                digits_bundle,
                db_path,
                None,
                {
                    "rounds": 2,  # the second waits for the hostile too: alive after the flood
                    "min_devices": 4,
                    "min_reports": 3,
                    "deadline_seconds": 60,
                    "local_epochs": 1,
                    "batch_size": 16,
                },
            ),
        )
        end = time.monotonic() + 40
        while not hostile.invited():
            assert time.monotonic() < end and orch.poll() is None, fleet.all_logs()
            time.sleep(0.05)
        rows_before = _rows(db_path)
        lines_before = len(fleet.logs("orchestrator").splitlines())
        sampler = RssSampler(orch.pid)
        rss_before = sampler.proc.memory_info().rss
        sampler.start()
        t0 = time.monotonic()
        sent = hostile.flood(FLOOD)
        flood_seconds = time.monotonic() - t0
        time.sleep(1.0)  # the budget refills: the abort that ends the hostile's part gets in
        alive_after_flood = orch.poll() is None
        hostile.abort_open_rounds(until=lambda: orch.poll() is not None, timeout=60)
        assert fleet.wait("orchestrator", timeout=5) == 0, fleet.all_logs()
        sampler.done.set()
        sampler.join(2)
    finally:
        hostile.stop()
        fleet.stop_all()

    log_text = fleet.logs("orchestrator")
    flood_lines = log_text.splitlines()[lines_before:]
    rows_after = _rows(db_path)
    db = sqlite3.connect(db_path)
    (run_id,) = db.execute("SELECT run_id FROM runs").fetchone()
    state, reports, participants = db.execute(
        "SELECT state, reports, participants FROM rounds WHERE run_id=? AND round=1", (run_id,)
    ).fetchone()
    accepted = sorted(
        a for (a,) in db.execute("SELECT agent_id FROM updates WHERE status='accepted' AND round=1")
    )
    runs_written = {r for (r,) in db.execute("SELECT DISTINCT run_id FROM updates")}
    db.close()
    grown = {t: rows_after[t] - rows_before.get(t, 0) for t in rows_after}
    measured = _honest_publishes(mosquitto.log_tail(10**7), honest)
    print(  # the report's numbers (pytest -s)
        f"\nflood: {sum(sent.values())} messages in {flood_seconds:.1f} s {dict(sent)}"
        f"\nrss: {rss_before / 2**20:.0f} MiB before, peak {sampler.peak / 2**20:.0f} MiB"
        f"\nrows gained: {grown}\norchestrator log lines from the flood on: {len(flood_lines)}"
        f" ({sum(HOSTILE in line for line in flood_lines)} naming {HOSTILE})"
        f"\nhonest PUBLISH packets (total, most in 1 s): {measured}"
    )
    assert alive_after_flood, fleet.all_logs()
    assert sum(sent.values()) == FLOOD
    assert (state, reports) == ("committed", 3), fleet.all_logs()
    assert HOSTILE in json.loads(participants)
    assert accepted == honest  # each honest device counted exactly once, the hostile never
    assert runs_written == {run_id}  # no row names an invented run
    assert sum(grown.values()) <= ROWS_BOUND, grown
    assert len(flood_lines) <= LOG_LINES_BOUND, "\n".join(flood_lines[-80:])
    hostile_lines = [line for line in flood_lines if HOSTILE in line]
    assert len(hostile_lines) <= HOSTILE_LINES_BOUND, "\n".join(hostile_lines)
    assert sampler.peak - rss_before <= RSS_GROWTH_BOUND, (rss_before, sampler.peak)
    assert any(f"{HOSTILE}: " in line and "rate limit" in line for line in flood_lines)
    for device in honest:  # the defaults never bite an honest agent
        assert not any(
            line.startswith(f"{device}: ") or f" {device}: " in line for line in flood_lines
        )
    limits = DeviceLimits()
    for device, (total, most) in measured.items():
        assert 0 < most < limits.message_burst / 4, (device, total, most)


# ---- the transport's part: the retain flag, and a bounded receive queue ----
def _link(broker: Any, **kwargs: Any) -> Any:
    from fedge.protocol.mqtt_link import MqttLink, MqttSettings

    user = "fedge-orchestrator"
    settings = MqttSettings(url=broker.url, username=user, password=broker.users[user])
    link = MqttLink(settings, client_id=user, persistent=False, **kwargs)
    link.subscribe(f"{broker.prefix}/agent/+/up/#")
    link.start()
    assert link.wait_connected(5)
    return link


def _device(broker: Any, user: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, broker.users[user])
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def _get(link: Any, timeout: float = 5.0) -> tuple[str, bytes, bool]:
    item = link.get(timeout)
    assert item is not None, "nothing received"
    return item[0], item[1], link.last_was_retained()


def test_mqtt_link_tells_retained_messages_apart(mosquitto):
    dev = _device(mosquitto, "dev-1")
    up = f"{mosquitto.prefix}/agent/dev-1/up/msg"
    dev.publish(up, b"left behind", qos=1, retain=True).wait_for_publish(5)
    link = _link(mosquitto)
    try:
        assert _get(link) == (up, b"left behind", True)  # replayed on subscribe
        dev.publish(up, b"live", qos=1).wait_for_publish(5)
        assert _get(link) == (up, b"live", False)
        dev.publish(up, b"live, retained", qos=1, retain=True).wait_for_publish(5)
        assert _get(link) == (up, b"live, retained", True)  # MQTT 5 retain-as-published
    finally:
        link.stop()
        dev.disconnect()
        dev.loop_stop()


def test_mqtt_link_receive_queue_is_bounded(mosquitto):
    cap = 64 * 1024
    link = _link(mosquitto, max_queued_bytes=cap)
    dev = _device(mosquitto, "dev-1")
    up = f"{mosquitto.prefix}/agent/dev-1/up/msg"
    try:
        for i in range(500):  # 500 KiB at an owner that does not read
            dev.publish(up, bytes([i % 256]) * 1024, qos=1)
        end = time.monotonic() + 10
        while link.pending() + link.dropped < 500 and time.monotonic() < end:
            time.sleep(0.05)
        queued = link.pending()
        assert link.dropped > 0 and queued + link.dropped == 500
        assert queued * (1024 + len(up)) <= cap
        while link.get(0.1) is not None:  # drained: room again
            pass
        dev.publish(up, b"after", qos=1).wait_for_publish(5)
        assert _get(link)[1] == b"after"
    finally:
        link.stop()
        dev.disconnect()
        dev.loop_stop()

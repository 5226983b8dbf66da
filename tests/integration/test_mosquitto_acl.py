"""The generated Mosquitto files enforce fedge's topic layout on a real broker (paho-mqtt 2.x).

Mosquitto acknowledges a denied QoS 1 publish and drops it silently, so "not delivered" is
checked with a sentinel: the same client then publishes an allowed message, and because
one client's QoS 1 messages arrive in order, the sentinel's arrival proves the denied one
would have arrived already.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.mosquitto import MosquittoBroker
from support.mqtt_peer import Peer
from support.toy_bundle import write_toy_bundle

from fedge.orchestrator.config import OrchestratorConfig, RoundSettings
from fedge.orchestrator.server import Orchestrator
from fedge.protocol.bundle import load_bundle
from fedge.protocol.invitations import Invitation
from fedge.protocol.messages import RoundTask, Status, parse_message
from fedge.protocol.mqtt_link import MqttLink, MqttSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

WAIT_S = 5.0


@pytest.fixture
def connect(mosquitto: MosquittoBroker) -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def make(user: str | None, password: str | None = None, *, ok: bool = True) -> Peer:
        if user is not None and password is None:
            password = mosquitto.users[user]
        peer = Peer(mosquitto.host, mosquitto.port, user, password)
        peers.append(peer)
        reason = peer.wait_connack()
        if ok:
            assert not reason.is_failure, f"{user} refused: {reason}\n{mosquitto.log_tail()}"
        return peer

    yield make
    for peer in peers:
        peer.close()


def test_anonymous_connection_is_refused(connect: Callable[..., Peer]) -> None:
    assert connect(None, ok=False).reason.is_failure


def test_wrong_password_is_refused(connect: Callable[..., Peer]) -> None:
    assert connect("dev-0", "not-the-password", ok=False).reason.is_failure


def test_unknown_user_is_refused(connect: Callable[..., Peer]) -> None:
    assert connect("dev-99", "whatever", ok=False).reason.is_failure


def test_device_status_reaches_orchestrator(
    mosquitto: MosquittoBroker, connect: Callable[..., Peer]
) -> None:
    p = mosquitto.prefix
    orch = connect("fedge-orchestrator")
    orch.subscribe(f"{p}/agent/+/status")
    dev0 = connect("dev-0")
    dev0.publish(f"{p}/agent/dev-0/status", b"online")
    assert orch.receive_until(b"online") == [(f"{p}/agent/dev-0/status", b"online")]


def test_device_cannot_publish_as_another_device(
    mosquitto: MosquittoBroker, connect: Callable[..., Peer]
) -> None:
    p = mosquitto.prefix
    orch = connect("fedge-orchestrator")
    orch.subscribe(f"{p}/#")
    dev0 = connect("dev-0")
    dev0.publish(f"{p}/agent/dev-1/status", b"forged")
    dev0.publish(f"{p}/agent/dev-1/up/delta", b"forged-delta")
    dev0.publish(f"{p}/round/current", b"forged-round")
    dev0.publish(f"{p}/agent/dev-0/up/delta", b"sentinel")
    seen = orch.receive_until(b"sentinel")
    assert seen == [(f"{p}/agent/dev-0/up/delta", b"sentinel")], seen


def test_device_cannot_read_another_devices_commands(
    mosquitto: MosquittoBroker, connect: Callable[..., Peer]
) -> None:
    p = mosquitto.prefix
    dev1 = connect("dev-1")
    dev1.subscribe(f"{p}/agent/dev-0/cmd")
    dev1.subscribe(f"{p}/#")
    dev0 = connect("dev-0")
    dev0.subscribe(f"{p}/agent/dev-0/cmd")
    orch = connect("fedge-orchestrator")
    orch.publish(f"{p}/agent/dev-0/cmd", b"for-dev-0")
    orch.publish(f"{p}/agent/dev-1/cmd", b"for-dev-1")
    assert dev0.receive_until(b"for-dev-0") == [(f"{p}/agent/dev-0/cmd", b"for-dev-0")]
    seen = dev1.receive_until(b"for-dev-1")
    assert [payload for _, payload in seen] == [b"for-dev-1"], seen


def test_retained_message_survives_restart(
    mosquitto: MosquittoBroker, connect: Callable[..., Peer]
) -> None:
    topic = f"{mosquitto.prefix}/round/current"
    orch = connect("fedge-orchestrator")
    orch.publish(topic, b'{"round": 7}', retain=True)
    orch.close()
    old_pid = mosquitto.pid
    mosquitto.restart()
    assert mosquitto.pid != old_pid and mosquitto.running
    dev2 = connect("dev-2")
    dev2.subscribe(f"{mosquitto.prefix}/round/#")
    msg = dev2.messages.get(timeout=WAIT_S)
    assert (msg.topic, msg.payload, msg.retain) == (topic, b'{"round": 7}', True)


def test_each_device_reads_only_its_own_invitation(
    mosquitto: MosquittoBroker, connect: Callable[..., Peer], tmp_path: Path
) -> None:
    """A real orchestrator opens a round for 2 of 4 devices: every device subscribes to every
    device's invitation topic, and the broker hands each only its own. Invitations precede the
    round task (one publisher, in order), so a device that has the open task would have had
    any other device's invitation already. A device that connects later gets its own again."""
    p = mosquitto.prefix
    peers = {}
    for i in range(4):
        dev = connect(f"dev-{i}")
        dev.subscribe(f"{p}/agent/+/invite")
        dev.subscribe(f"{p}/round/current")
        status = Status(agent=f"dev-{i}", state="idle", backend="fake", num_samples=10)
        dev.publish(f"{p}/agent/dev-{i}/status", status.encode(), retain=True)
        peers[f"dev-{i}"] = dev
    user = mosquitto.orchestrator_user
    cfg = OrchestratorConfig(
        federation=mosquitto.federation,
        client_id=user,
        database=str(tmp_path / "o.db"),
        mqtt=MqttSettings(url=mosquitto.url, username=user, password=mosquitto.users[user]),
        rounds=RoundSettings(rounds=1, min_devices=4, devices_per_round=2, deadline_seconds=60),
    )
    bundle = load_bundle(write_toy_bundle(tmp_path / "bundle"))
    orch = Orchestrator(cfg, transport=MqttLink(cfg.mqtt, client_id=user), bundle=bundle)
    orch.start()
    try:
        end = time.monotonic() + 10
        while orch.current is None:
            assert time.monotonic() < end, "the orchestrator opened no round"
            orch.poll(0.05)
        invited = sorted(orch.current.participants)
        assert len(invited) == 2
        for agent, dev in peers.items():
            got = _invitations_until_open_task(dev)
            assert [inv.agent for inv in got] == ([agent] if agent in invited else []), agent
        peers[invited[0]].close()
        again = connect(invited[0])  # a restarted device: both retained messages come back
        again.subscribe(f"{p}/agent/+/invite")
        again.subscribe(f"{p}/round/current")
        assert [inv.agent for inv in _invitations_until_open_task(again)] == [invited[0]]
    finally:
        orch.transport.stop()
        orch.store.close()


def _invitations_until_open_task(dev: Peer) -> list[Invitation]:
    """The invitations a device receives before it holds the open round task."""
    got: list[Invitation] = []
    while True:
        msg = dev.messages.get(timeout=WAIT_S)
        parsed = parse_message(msg.payload)
        if isinstance(parsed, Invitation):
            assert msg.topic.endswith(f"/agent/{parsed.agent}/invite")
            got.append(parsed)
        elif isinstance(parsed, RoundTask) and parsed.state == "open":
            assert parsed.participants == [] and parsed.invited == 2
            return got

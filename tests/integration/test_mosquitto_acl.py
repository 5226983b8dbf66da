"""The generated Mosquitto files enforce fedge's topic layout on a real broker (paho-mqtt 2.x).

Mosquitto acknowledges a denied QoS 1 publish and drops it silently, so "not delivered" is
checked with a sentinel: the same client then publishes an allowed message, and because
one client's QoS 1 messages arrive in order, the sentinel's arrival proves the denied one
would have arrived already.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from support.mosquitto import MosquittoBroker
from support.mqtt_peer import Peer

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

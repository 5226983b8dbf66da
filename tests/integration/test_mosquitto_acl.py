"""The generated Mosquitto files enforce fedge's topic layout on a real broker (paho-mqtt 2.x).

Mosquitto acknowledges a denied QoS 1 publish and drops it silently, so "not delivered" is
checked with a sentinel: the same client then publishes an allowed message, and because
one client's QoS 1 messages arrive in order, the sentinel's arrival proves the denied one
would have arrived already.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from support.mosquitto import MosquittoBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

WAIT_S = 5.0


class Peer:
    """A paho client with its CONNACK result and a queue of received messages."""

    def __init__(self, broker: MosquittoBroker, user: str | None, password: str | None) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user or "anonymous")
        if user is not None:
            self.client.username_pw_set(user, password)
        self.connected = threading.Event()
        self.reason: Any = None
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self.subacks.put(codes)
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.reason = reason
        self.connected.set()
        if reason.is_failure:  # stop paho from retrying a refused login
            self.client.disconnect()

    def wait_connack(self) -> Any:
        assert self.connected.wait(WAIT_S), "no CONNACK"
        return self.reason

    def subscribe(self, topic: str) -> list[Any]:
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=WAIT_S)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def receive_until(self, payload: bytes) -> list[tuple[str, bytes]]:
        """Collect (topic, payload) pairs up to and including the first with ``payload``."""
        seen: list[tuple[str, bytes]] = []
        while True:
            msg = self.messages.get(timeout=WAIT_S)
            seen.append((msg.topic, msg.payload))
            if msg.payload == payload:
                return seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def connect(mosquitto: MosquittoBroker) -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def make(user: str | None, password: str | None = None, *, ok: bool = True) -> Peer:
        if user is not None and password is None:
            password = mosquitto.users[user]
        peer = Peer(mosquitto, user, password)
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

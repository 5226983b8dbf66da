"""MqttLink on a real Mosquitto: what was published before stop() is delivered."""

from __future__ import annotations

import queue

import pytest
from support.mqtt_peer import Peer

from fedge.protocol.errors import MessageError
from fedge.protocol.mqtt_link import MqttLink, MqttSettings

pytestmark = pytest.mark.integration


def test_stop_flushes_queued_qos1_messages(mosquitto):
    topic = f"{mosquitto.prefix}/agent/dev-0/up/msg"
    watcher = Peer(mosquitto.host, mosquitto.port, "fedge-orchestrator",
                   mosquitto.users["fedge-orchestrator"])  # fmt: skip
    try:
        assert not watcher.wait_connack().is_failure
        watcher.subscribe(topic)
        link = MqttLink(
            MqttSettings(url=mosquitto.url, username="dev-0", password=mosquitto.users["dev-0"]),
            client_id="dev-0",
        )
        link.start()
        assert link.wait_connected(10)
        sent = [f"{i:04d}".encode() + b"x" * 20_000 for i in range(100)]
        for payload in sent:
            link.publish(topic, payload)
        link.stop()  # at once: the messages are still queued in paho
        got = []
        while len(got) < len(sent):
            try:
                got.append(watcher.messages.get(timeout=5).payload)
            except queue.Empty:
                break
        assert got == sent, f"{len(got)} of {len(sent)} delivered"
    finally:
        watcher.close()


@pytest.mark.parametrize("before_connect", [True, False])
def test_fetch_retained_gets_the_retained_copies_once(mosquitto, before_connect):
    """``fetch_retained`` subscribes and unsubscribes: the retained message arrives (flagged),
    later live messages on that topic do not. Asked before the connection, it waits for it."""
    p = mosquitto.prefix
    devices = ["dev-1", "dev-2"]
    topics = [f"{p}/agent/{d}/status" for d in devices]
    user = "fedge-orchestrator"
    peers = [Peer(mosquitto.host, mosquitto.port, d, mosquitto.users[d]) for d in devices]
    link = MqttLink(
        MqttSettings(url=mosquitto.url, username=user, password=mosquitto.users[user]),
        client_id=user,
    )
    try:
        for peer, topic in zip(peers, topics, strict=True):
            assert not peer.wait_connack().is_failure
            peer.publish(topic, topic.encode(), retain=True)
        if before_connect:
            link.fetch_retained(topics)
        link.start()
        assert link.wait_connected(10)
        if not before_connect:
            link.fetch_retained(topics)
        got = []
        for _ in topics:
            item = link.get(5)
            assert item is not None, f"retained copies missing; got {got}"
            got.append((item[0], link.last_was_retained()))
        assert sorted(got) == [(t, True) for t in topics]
        peers[0].publish(topics[0], b"live")  # unsubscribed by now: not delivered
        assert link.get(1.0) is None
        with pytest.raises(MessageError, match="not filters"):
            link.fetch_retained([f"{p}/agent/+/status"])
    finally:
        link.stop()
        for peer in peers:
            peer.close()

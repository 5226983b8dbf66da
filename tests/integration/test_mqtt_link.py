"""MqttLink on a real Mosquitto: what was published before stop() is delivered."""

from __future__ import annotations

import queue

import pytest
from support.mqtt_peer import Peer

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

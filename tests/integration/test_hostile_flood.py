"""One device floods the broker; another device's messages must still all reach the orchestrator.

Real Mosquitto on the files ``write_broker_files`` renders (the generated queue limits).
Before the limits were sized, Mosquitto's default of 1,000 queued messages per client made
it log "Outgoing messages are being dropped" for the orchestrator and lose the honest
device's messages queued behind the flood.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FLOOD = 10_000
HONEST = 200


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

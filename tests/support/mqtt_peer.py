"""A raw paho client for broker tests: its CONNACK, SUBACKs and received messages in queues."""

from __future__ import annotations

import queue
import threading
from typing import Any

import paho.mqtt.client as mqtt

WAIT_S = 5.0


class Peer:
    """One MQTT 5 connection (TLS when ``ca_file`` is given) driven from the test thread."""

    def __init__(
        self,
        host: str,
        port: int,
        user: str | None,
        password: str | None,
        *,
        ca_file: str | None = None,
    ) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user or "anonymous")
        if user is not None:
            self.client.username_pw_set(user, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=ca_file)
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.reason: Any = None
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self.disconnected.set()
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self.subacks.put(codes)
        self.client.connect(host, port, keepalive=10)
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

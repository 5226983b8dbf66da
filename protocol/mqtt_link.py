"""A small MQTT link over paho-mqtt 2.x shared by agents and the orchestrator.

The network thread only appends to a queue (callbacks never block it); the owner's main loop
drains ``messages``. Subscriptions are re-made on every (re)connect, reconnects back off
exponentially with jitter, and sessions persist across disconnects (MQTT 5 needs an explicit
session expiry for that: paho's default of 0 keeps nothing).
"""

from __future__ import annotations

import logging
import queue
import random
import ssl
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from .errors import ConfigError, MessageError
from .mqtt_failures import (
    SHORT_CONNECTION_S,
    TakeoverWatch,
    describe_connect_error,
    describe_refusal,
    describe_tls_alert,
    takeover_message,
)

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 1024 * 1024  # our own limit; paho does not enforce the broker's
QUEUED_OVERHEAD_BYTES = 256  # a queued message's tuple and object headers, roughly


def _queued_size(topic: str, payload: bytes) -> int:
    return len(payload) + len(topic) + QUEUED_OVERHEAD_BYTES


class Received(tuple[str, bytes]):  # noqa: SLOT001 - carries one extra attribute
    """A received (topic, payload) that also says whether the broker delivered it retained."""

    retain: bool = False


@dataclass
class MqttSettings:
    """Where and how to connect. ``url`` is mqtt://host:port or mqtts://host:port."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str = ""
    password: str = ""
    protocol: str = "5"  # "5" or "3.1.1" (the embedded demo broker speaks only 3.1.1)
    ca_file: str = ""
    cert_file: str = ""  # client certificate (PEM) for brokers that require one (mutual TLS)
    key_file: str = ""  # its private key (PEM)
    keepalive: int = 30
    session_expiry: int = 3600  # seconds the broker keeps our subscriptions and queued QoS 1
    max_payload: int = MAX_PAYLOAD_BYTES

    def host_port(self) -> tuple[str, int, bool]:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ConfigError(
                f"broker url {self.url!r} is not mqtt://host:port or mqtts://host:port"
            )
        tls = parsed.scheme == "mqtts"
        return parsed.hostname, parsed.port or (8883 if tls else 1883), tls


class MqttLink:
    """One MQTT connection with a queue of received (topic, payload) pairs."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        will: tuple[str, bytes] | None = None,
        persistent: bool = True,
        max_queued_bytes: int = 0,
    ) -> None:
        """``max_queued_bytes`` > 0 bounds the receive queue (payload + topic + a per-message
        overhead): a message arriving while it is full is dropped and counted in
        ``dropped``. 0: unbounded (the owner must drain faster than messages arrive)."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._mqtt = mqtt
        self.settings = settings
        self.client_id = client_id
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._max_queued_bytes = max_queued_bytes
        self._queued_bytes = 0
        self._queue_lock = threading.Lock()
        self.dropped = 0  # messages refused because the receive queue was full
        self._subscriptions: dict[str, int] = {}
        self._fetches: list[str] = []  # fetch_retained topics not sent yet (not connected)
        self._lock = threading.Lock()
        self._unacked: deque[Any] = deque()  # QoS 1 publishes not yet acknowledged, in order
        self._connected = threading.Event()
        self._persistent = persistent
        self._stopping = False  # set by stop(): the next disconnect is ours, not a failure
        self.host, self.port, tls = settings.host_port()
        if settings.protocol not in ("5", "3.1.1"):
            raise ConfigError(f"mqtt protocol must be '5' or '3.1.1', not {settings.protocol!r}")
        self._v5 = settings.protocol == "5"
        kwargs: dict[str, Any] = {
            "callback_api_version": CallbackAPIVersion.VERSION2,
            "client_id": client_id,
            "protocol": mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
        }
        if not self._v5:
            kwargs["clean_session"] = not persistent
        client = mqtt.Client(**kwargs)
        if settings.username:
            client.username_pw_set(settings.username, settings.password or None)
        if tls:
            client.tls_set(
                ca_certs=settings.ca_file or None,
                certfile=settings.cert_file or None,
                keyfile=settings.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if will:
            client.will_set(will[0], will[1], qos=1, retain=True)
        # Exponential backoff; the random floor spreads a fleet's reconnects (jitter).
        self._min_delay = 1 + int(random.random() * 2)
        client.reconnect_delay_set(min_delay=self._min_delay, max_delay=30)
        client.max_inflight_messages_set(20)
        self._takeovers = TakeoverWatch()
        self._connected_at = 0.0
        self._problem = ""  # the last connection problem, for the status and `fedge doctor`
        self._last_fail = ""
        self._paho_error = ""  # paho's last MQTT_LOG_ERR line (a TLS alert before the CONNACK)
        self.last_retained = False  # whether the message get() last returned was retained
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_log = self._on_log
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    # --- paho callbacks (network thread: never block) ---
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            auth, message = describe_refusal(reason.value, reason, self.settings.username)
            self._problem = message
            log.log(logging.ERROR if auth else logging.WARNING, "%s", message)
            return
        self._connected_at = time.monotonic()
        self._last_fail = self._paho_error = ""
        if self._takeovers.drops == 0:
            self._problem = ""
        log.info("connected to %s:%d as %s", self.host, self.port, self.client_id)
        with self._lock:  # the owner may subscribe concurrently from its own thread
            subscriptions = list(self._subscriptions.items())
        for topic, qos in subscriptions:
            self._subscribe(topic, qos)
        self._send_fetches()
        self._connected.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._stopping:
            log.info("disconnected from broker (stopping)")
            return
        if not was_connected:
            # a refused CONNACK is reported by _on_connect; a TLS alert after the handshake
            # (a client certificate the broker wants, or has revoked) only by paho's log
            error, self._paho_error = self._paho_error, ""
            if error:
                security, message = describe_tls_alert(error, f"{self.host}:{self.port}")
                if security:
                    self._problem = message
                    log.error("%s", message)
            return
        connected_for = time.monotonic() - self._connected_at
        code = int(getattr(reason, "value", 0) or 0)
        if self._takeovers.on_disconnect(code, connected_for, self._stopping):
            self._problem = takeover_message(self.client_id)
            delay = self._takeovers.reconnect_delay()
            log.error(
                "%s (disconnected by %s:%d after %.1f s: %s; takeover %d in a row); "
                "reconnecting in %d s",
                self._problem,
                self.host,
                self.port,
                connected_for,
                reason,
                self._takeovers.drops,
                delay,
            )
        else:
            delay = self._takeovers.reconnect_delay()
            if self._takeovers.drops == 0:
                self._problem = ""
            log.info("disconnected from %s:%d (%s); will reconnect", self.host, self.port, reason)
        # paho resets its delay to min_delay after each successful CONNACK: set it every time
        client.reconnect_delay_set(min_delay=max(self._min_delay, delay), max_delay=max(30, delay))

    def _on_log(self, client: Any, userdata: Any, level: int, buf: str) -> None:
        if level == self._mqtt.MQTT_LOG_ERR:
            self._paho_error = buf

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` block: the exception is still current
        security, message = describe_connect_error(sys.exc_info()[1], f"{self.host}:{self.port}")
        if security:
            self._problem = message
            log.error("%s", message)
        elif message != self._last_fail:  # a broker that is down: say so once per outage
            log.warning("%s; retrying", message)
        self._last_fail = message

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if self._max_queued_bytes:
            size = _queued_size(msg.topic, msg.payload)
            with self._queue_lock:
                if self._queued_bytes + size > self._max_queued_bytes:
                    self.dropped += 1
                    return
                self._queued_bytes += size
        item = Received((msg.topic, msg.payload))
        item.retain = bool(msg.retain)
        self.messages.put(item)

    def _subscribe(self, topic: str, qos: int) -> None:
        if self._v5:  # retain-as-published: a live retained message keeps its flag too
            from paho.mqtt.subscribeoptions import SubscribeOptions

            options = SubscribeOptions(qos=qos, retainAsPublished=True)
            self._client.subscribe(topic, options=options)
        else:
            self._client.subscribe(topic, qos)

    def _send_fetches(self) -> None:
        with self._lock:
            topics, self._fetches = self._fetches, []
        for topic in topics:
            # The broker sends a topic's retained message while it handles the SUBSCRIBE,
            # before it reads the UNSUBSCRIBE behind it: this is "get the retained copy".
            self._subscribe(topic, 1)
            self._client.unsubscribe(topic)

    # --- owner API ---
    def start(self) -> None:
        """Begin connecting in the background (retries until stop())."""
        kwargs: dict[str, Any] = {"keepalive": self.settings.keepalive}
        if self._v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.settings.session_expiry if self._persistent else 0
            kwargs["clean_start"] = not self._persistent
            kwargs["properties"] = props
        self._client.connect_async(self.host, self.port, **kwargs)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def problem(self) -> str:
        """The last TLS, login or session-takeover problem ("" once a connection holds)."""
        held = time.monotonic() - self._connected_at >= SHORT_CONNECTION_S
        if self._problem and self._connected.is_set() and held:
            self._problem = ""
        return self._problem

    def subscribe(self, topic: str, qos: int = 1) -> None:
        with self._lock:
            self._subscriptions[topic] = qos
        if self._connected.is_set():
            self._subscribe(topic, qos)

    def fetch_retained(self, topics: list[str]) -> None:
        """Receive once the retained messages on these exact topics: subscribe to each and
        unsubscribe again (now, or right after the next connect). For brokers that replay
        retained messages only to exact-topic subscriptions, not to wildcard filters
        (RabbitMQ 3.x); on others the retained copies arrive twice, once per subscription."""
        for topic in topics:
            if "+" in topic or "#" in topic:
                raise MessageError(f"fetch_retained takes topics, not filters: {topic!r}")
        with self._lock:
            self._fetches.extend(topics)
        if self._connected.is_set():
            self._send_fetches()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Queue a message (sent now, or after the reconnect); refuse oversize payloads."""
        if len(payload) > self.settings.max_payload:
            raise MessageError(
                f"payload for {topic} is {len(payload)} bytes; limit {self.settings.max_payload}"
            )
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        # Track what is on its way; a publish made while disconnected (rc != 0) is queued by
        # paho and resent after the reconnect, but its MessageInfo can no longer tell us when.
        if qos and info.rc == 0:
            self._unacked.append(info)
            while self._unacked and self._unacked[0].is_published():
                self._unacked.popleft()

    def get(self, timeout: float) -> tuple[str, bytes] | None:
        """Next received message, or None after ``timeout`` seconds. ``last_retained`` then
        says whether the broker delivered it as a retained message (a device may retain
        messages on its own up topics: the orchestrator clears and ignores those)."""
        try:
            item = self.messages.get(timeout=timeout)
        except queue.Empty:
            self.last_retained = False
            return None
        if self._max_queued_bytes:
            with self._queue_lock:
                self._queued_bytes -= _queued_size(item[0], item[1])
        self.last_retained = bool(getattr(item, "retain", False))
        return item

    def last_was_retained(self) -> bool:
        """Whether the message ``get()`` returned last had the retain flag set."""
        return self.last_retained

    def pending(self) -> int:
        """How many received messages wait in the queue."""
        return self.messages.qsize()

    def stop(self, final: tuple[str, bytes] | None = None, timeout: float = 3.0) -> None:
        """Publish ``final`` (retained, e.g. an offline status), flush, disconnect."""
        try:
            if final and self._connected.is_set():
                self.publish(final[0], final[1], retain=True)
            # Flush: a disconnect drops QoS 1 messages paho has not sent yet (e.g. the last
            # round's event, published just before a finished orchestrator exits).
            deadline = time.monotonic() + timeout
            while self._connected.is_set() and time.monotonic() < deadline:
                if all(info.is_published() for info in self._unacked):
                    break
                time.sleep(0.02)
            self._stopping = True
            self._client.disconnect()
        finally:
            self._client.loop_stop()

"""The transport seam: what the agent and the orchestrator need from a message bus.

``MqttLink`` implements it over a real broker; ``InMemoryBroker`` / ``InMemoryTransport``
implement it in one process for unit tests, so that round logic runs in milliseconds with no
broker and no sleeps. The semantics the parts rely on are MQTT's: topic filters with ``+`` and
``#``, retained messages delivered on subscribe (an empty retained payload clears the topic),
in-order delivery per publisher, and a final message published when a client stops (the Last
Will's job on a real broker). A receiver can ask whether the message ``get()`` returned last
came from the retained store (``last_was_retained``): MQTT sets the flag on the copies it
delivers on subscribe, and on live copies too for MQTT 5 subscriptions with
retain-as-published, which ``MqttLink`` makes and ``InMemoryBroker`` models.

Some brokers replay retained messages only to subscriptions naming the exact topic, not to
wildcard filters (RabbitMQ 3.x's MQTT plugin; ``InMemoryBroker(wildcard_retained=False)``
models it): ``fetch_retained`` asks for the retained messages of known topics that way.
"""

from __future__ import annotations

import queue
import threading
from typing import Protocol, runtime_checkable

Message = tuple[str, bytes]


@runtime_checkable
class Transport(Protocol):
    """A connection to a publish/subscribe bus, owned by one thread."""

    @property
    def connected(self) -> bool:
        """Whether the bus is reachable now."""
        ...

    def start(self) -> None:
        """Begin connecting in the background."""
        ...

    def wait_connected(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a connection; True once connected."""
        ...

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Receive messages on ``topic`` (a filter with + and #), now and after reconnects."""
        ...

    def fetch_retained(self, topics: list[str]) -> None:
        """Receive once the retained messages on these exact topics (no wildcards), also from
        a broker that replays none to wildcard subscriptions; now, or when connected."""
        ...

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Send ``payload``; refuse (raise MessageError) what the bus could not carry."""
        ...

    def get(self, timeout: float) -> Message | None:
        """The next received (topic, payload), or None after ``timeout`` seconds."""
        ...

    def pending(self) -> int:
        """How many received messages wait to be read (a burst to drain before deciding)."""
        ...

    def last_was_retained(self) -> bool:
        """Whether the message ``get()`` returned last had the retain flag set."""
        ...

    def stop(self, final: Message | None = None, timeout: float = 3.0) -> None:
        """Publish ``final`` retained (e.g. an offline status), flush, disconnect."""
        ...


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching: ``+`` is one level, a trailing ``#`` is any levels."""
    want = topic_filter.split("/")
    have = topic.split("/")
    for i, part in enumerate(want):
        if part == "#":
            return i == len(want) - 1
        if i >= len(have) or (part != "+" and part != have[i]):
            return False
    return len(want) == len(have)


class InMemoryBroker:
    """A process-local bus with MQTT's retained-message and wildcard semantics.

    ``wildcard_retained=False``: retained messages are replayed only to exact-topic
    subscriptions, as RabbitMQ 3.x does."""

    def __init__(self, *, wildcard_retained: bool = True) -> None:
        self.wildcard_retained = wildcard_retained
        self._lock = threading.Lock()
        self._clients: list[InMemoryTransport] = []
        self.retained: dict[str, bytes] = {}
        self.published: list[tuple[str, str, bytes, bool]] = []  # (client, topic, payload, retain)

    def client(self, client_id: str) -> InMemoryTransport:
        """A new transport on this bus (connected once started)."""
        return InMemoryTransport(self, client_id)

    def _attach(self, client: InMemoryTransport) -> None:
        with self._lock:
            if client not in self._clients:
                self._clients.append(client)

    def _detach(self, client: InMemoryTransport) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)

    def _deliver_retained(self, client: InMemoryTransport, topic_filter: str) -> None:
        if not self.wildcard_retained and ("+" in topic_filter or "#" in topic_filter):
            return
        with self._lock:
            matching = [(t, p) for t, p in self.retained.items() if topic_matches(topic_filter, t)]
        for topic, payload in matching:
            client._inbox.put((topic, payload, True))

    def publish(self, sender: str, topic: str, payload: bytes, retain: bool) -> None:
        """Route one message to every attached client subscribed to a matching filter."""
        with self._lock:
            self.published.append((sender, topic, payload, retain))
            if retain:
                if payload:
                    self.retained[topic] = payload
                else:
                    self.retained.pop(topic, None)
            receivers = [
                c for c in self._clients if any(topic_matches(f, topic) for f in c.subscriptions)
            ]
        for client in receivers:  # retain-as-published: live copies keep the flag
            client._inbox.put((topic, payload, retain))


class InMemoryTransport:
    """One client of an ``InMemoryBroker``; implements ``Transport``."""

    def __init__(self, broker: InMemoryBroker, client_id: str) -> None:
        self.broker = broker
        self.client_id = client_id
        self.subscriptions: list[str] = []
        self._inbox: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._connected = False
        self._last_retained = False
        self._fetches: list[str] = []  # fetch_retained topics waiting for start()

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> None:
        self._connected = True
        self.broker._attach(self)
        for topic_filter in self.subscriptions:
            self.broker._deliver_retained(self, topic_filter)
        fetches, self._fetches = self._fetches, []
        self.fetch_retained(fetches)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected

    def subscribe(self, topic: str, qos: int = 1) -> None:
        if topic not in self.subscriptions:
            self.subscriptions.append(topic)
            if self._connected:
                self.broker._deliver_retained(self, topic)

    def fetch_retained(self, topics: list[str]) -> None:
        if not self._connected:
            self._fetches.extend(topics)
            return
        for topic in topics:
            self.broker._deliver_retained(self, topic)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.broker.publish(self.client_id, topic, payload, retain)

    def get(self, timeout: float) -> Message | None:
        try:
            if timeout <= 0:
                topic, payload, retained = self._inbox.get_nowait()
            else:
                topic, payload, retained = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        self._last_retained = retained
        return topic, payload

    def last_was_retained(self) -> bool:
        return self._last_retained

    def pending(self) -> int:
        return self._inbox.qsize()

    def stop(self, final: Message | None = None, timeout: float = 3.0) -> None:
        if final is not None and self._connected:
            self.publish(final[0], final[1], retain=True)
        self._connected = False
        self.broker._detach(self)

"""Many simulated fleet devices per process: real paho clients on one epoll loop.

bench/fleet_devices.py's ``SimDevice`` used one ``MqttLink`` per device (paho's
``loop_start``: a network thread each). 250 threads per process contending for the GIL on 2
cores could not keep a 1,000-device fleet in real time (chunk requests unanswered for 5 s).
Here, as in bench/epoll_devices.py, every device's paho client is driven from the worker's
single thread through paho's external-loop API (``loop_read`` / ``loop_write`` /
``loop_misc`` on an ``epoll`` selector): no threads, no ``select()`` limit of 1,023
descriptors. ``EpollLink`` offers the part of ``MqttLink`` a ``SimDevice`` uses (subscribe,
publish, get, connected), so the device logic, profiles and protocol are unchanged; training
sleeps are the device's own timers (``busy_until``), checked on every pass of the loop.
"""

from __future__ import annotations

import collections
import os
import random
import resource
import selectors
import time
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

PASS_SECONDS = 0.01  # a loop pass at most this long without traffic: the timers' resolution
KEEPALIVE = 120
IDLE_LOOK_SECONDS = 0.2  # a device with nothing to do is looked at (availability) this often
_DIRTY: set[EpollLink] = set()  # links with bytes to write: flushing 500 links a pass cost 6 ms


class EpollLink:
    """One device's MQTT 5 session without a thread: the worker's loop reads and writes it."""

    def __init__(self, url: str, agent_id: str, password: str, will: tuple[str, bytes]) -> None:
        parsed = urlparse(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 1883
        self.topics: list[str] = []
        self.inbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self.connected = False
        self.lost_at = 0.0
        self.fd = -1
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=agent_id, protocol=mqtt.MQTTv5)
        c.username_pw_set(agent_id, password)
        c.will_set(will[0], will[1], qos=1, retain=True)
        c.max_inflight_messages_set(50)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self.client = c

    # the MqttLink subset SimDevice uses
    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.topics.append(topic)

    def start(self) -> None:
        self.client.connect(self.host, self.port, keepalive=KEEPALIVE)
        _DIRTY.add(self)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)
        _DIRTY.add(self)

    def get(self, timeout: float = 0) -> tuple[str, bytes] | None:
        return self.inbox.popleft() if self.inbox else None

    def stop(self, timeout: float = 0.5) -> None:
        self.client.disconnect()
        _DIRTY.add(self)

    # paho callbacks (run inside loop_read)
    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        opts = SubscribeOptions(qos=1, retainAsPublished=True)
        client.subscribe([(t, opts) for t in self.topics])
        self.connected = True

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self.inbox.append((msg.topic, bytes(msg.payload)))


def fleet_worker(*args):
    """Run ``creds`` devices on one loop until ``stop``; report their traffic and jobs.
    ``FLEET_PROFILE=dir``: each worker writes a cProfile of its loop there."""
    out = os.environ.get("FLEET_PROFILE")
    if not out:
        return _fleet_worker(*args)
    import cProfile

    with cProfile.Profile() as prof:
        _fleet_worker(*args)
    prof.dump_stats(os.path.join(out, f"worker-{os.getpid()}.prof"))


def _fleet_worker(url, creds, data, bundle_dir, profile_kw, seed, epochs, ready, stop, results):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one descriptor per device
    from fleet_devices import Profile, SimDevice, Trainer

    from fedge.protocol.bundle import load_bundle

    profile = Profile(**profile_kw)
    trainer = Trainer(load_bundle(bundle_dir), epochs=epochs, batch_size=16)
    devices = [
        SimDevice(
            url,
            aid,
            pw,
            x,
            y,
            profile,
            random.Random(f"{seed}/{aid}"),
            link_factory=EpollLink,
        )
        for (aid, pw), (x, y) in zip(creds, data, strict=True)
    ]
    sel = selectors.DefaultSelector()

    def attach(d: SimDevice) -> None:
        try:
            d.begin() if not d.link.lost_at else d.link.client.reconnect()
        except OSError:
            d.link.lost_at = time.monotonic()  # try again on a later pass
            return
        d.link.lost_at = 0.0
        sock = d.link.client.socket()
        if sock is not None:  # by descriptor: a closed socket can still be unregistered
            d.link.fd = sock.fileno()
            sel.register(d.link.fd, selectors.EVENT_READ, d)

    for i, d in enumerate(devices):
        attach(d)  # SimDevice.begin: subscriptions recorded, then the connection
        if i % 50 == 49:  # let the broker's listen backlog drain
            _pass(sel, devices, 0.0)
            _flush(devices)
    deadline = time.monotonic() + 120
    while not all(d.link.connected for d in devices) and time.monotonic() < deadline:
        _pass(sel, devices, 0.05)
        _flush(devices)
    ready.put(sum(d.link.connected for d in devices))
    t0 = time.monotonic()
    last_misc = t0
    passes, slowest, lost = 0, 0.0, 0
    while not stop.is_set():
        started = time.monotonic()
        lost += _pass(sel, devices, PASS_SECONDS)
        now = time.time()
        t = time.monotonic() - t0
        for d in devices:
            busy = d.link.inbox or d.task or d.pull or d.offered or d.busy_until
            asking = d.announce is not None and d.announce.state == "open"
            if d.link.connected and (busy or asking or now >= d.next_look):
                d.step(t, now, trainer)
                d.next_look = now + IDLE_LOOK_SECONDS
        if time.monotonic() - last_misc > 2:  # keepalive pings, reconnects
            last_misc = time.monotonic()
            for d in devices:
                if d.link.lost_at and last_misc - d.link.lost_at > 1:
                    attach(d)
                elif d.link.connected:
                    d.link.client.loop_misc()
        _flush(devices)
        passes += 1
        slowest = max(slowest, time.monotonic() - started)
    results.put(
        {
            "bytes": sum(d.bytes_up + d.bytes_down for d in devices),
            "jobs": sum(d.jobs for d in devices),
            "dropped": sum(d.dropped for d in devices),
            "train_seconds": trainer.seconds,
            "pis": sum(d.speed > 1 for d in devices),
            "passes": passes,
            "slowest_pass": slowest,
            "lost": lost,
            "fetch_unknown": sum(d.fetches[0] for d in devices),
            "fetch_served": sum(d.fetches[1] for d in devices),
        }
    )
    for d in devices:
        d.link.stop()
    _flush(devices)


def _pass(sel: selectors.BaseSelector, devices: list, timeout: float) -> int:
    """Read what arrived (callbacks fill inboxes and queue writes), then write what is queued;
    return how many connections were found closed."""
    lost = 0
    for key, _mask in sel.select(timeout):
        d = key.data
        rc = d.link.client.loop_read()
        _DIRTY.add(d.link)  # acks of what it read
        if rc != mqtt.MQTT_ERR_SUCCESS:  # the broker closed it: reconnect later
            sel.unregister(d.link.fd)
            d.link.connected = False
            d.link.lost_at = time.monotonic()
            lost += 1
    return lost


def _flush(devices: list) -> None:
    """Write what the links in ``_DIRTY`` queued."""
    links = list(_DIRTY)
    _DIRTY.clear()
    for link in links:
        c = link.client
        if c.want_write():
            c.loop_write()
            if c.want_write():  # the socket buffer is full: again next pass
                _DIRTY.add(link)

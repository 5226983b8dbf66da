"""Thousands of scripted devices in one process: real paho-mqtt clients on one epoll loop.

``tests/support/fake_agent.py`` gives every device an ``MqttLink`` (paho's ``loop_start``: one
network thread per client, and ``select()``, which cannot watch descriptors above 1023), so a
process holds ~330 of them and 10,000 devices need 30+ processes and 10,000 threads on 2 cores.
Here each paho client is driven from one thread per process through paho's external-loop API
(``loop_read`` / ``loop_write`` / ``loop_misc`` on an ``epoll`` selector), so one process holds
thousands of real MQTT 5 connections with their own credentials, Last Will and ACL.

Each device speaks the real protocol like FakeAgent: a retained idle status, the retained round
task and its own retained invitation; when both name the open round it offers a precomputed
delta (UpdateOffer) and serves its chunks when the orchestrator asks (FetchRequest). Like the
agent (agent/round_runner.py), a delta no larger than the task's ``inline_max_bytes`` rides in
the offer (base64: no fetch round trip); ``inline=False`` always makes the orchestrator pull.
Used by bench/round_overhead_bench.py ``--epoll``.
"""

from __future__ import annotations

import base64
import multiprocessing as mp
import resource
import selectors
import time
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from fedge.protocol.chunks import blob_ref, chunk_bytes, encode_frame
from fedge.protocol.invitations import Invitation, invites
from fedge.protocol.messages import (
    FetchRequest,
    RoundTask,
    Status,
    UpdateOffer,
    new_msg_id,
    parse_message,
)
from fedge.protocol.topics import Topics


class EpollDevice:
    """One device: a paho client without a thread of its own."""

    def __init__(
        self, host: str, port: int, agent_id: str, password: str, blob: bytes, inline: bool
    ) -> None:
        self.id = agent_id
        self.inline = base64.b64encode(blob).decode() if inline else ""
        self.topics = Topics("demo")
        self.down = self.topics.agent_down(agent_id)
        self.blob = blob
        self.ref = blob_ref(blob)
        self.task: RoundTask | None = None
        self.invitation: Invitation | None = None
        self.answered: set[tuple[str, int]] = set()
        self.invited_seen: dict[int, float] = {}
        self.connected = False
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=agent_id, protocol=mqtt.MQTTv5)
        c.username_pw_set(agent_id, password)
        offline = Status(agent=agent_id, state="offline", backend="fake").encode()
        c.will_set(self.topics.agent_status(agent_id), offline, qos=1, retain=True)
        c.max_inflight_messages_set(20)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self.client = c
        self.host, self.port = host, port

    def connect(self) -> None:
        self.client.connect(self.host, self.port, keepalive=300)

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        for t in (  # what the agent subscribes to: the broker delivers the pushed parameters
            self.topics.round_current,
            self.topics.round_params,
            self.topics.agent_cmd(self.id),
            self.topics.agent_down(self.id),
            self.topics.agent_invite(self.id),
        ):
            client.subscribe(t, qos=1)
        status = Status(agent=self.id, state="idle", backend="fake", num_samples=100)
        client.publish(self.topics.agent_status(self.id), status.encode(), qos=1, retain=True)
        self.connected = True

    def _on_message(self, client: Any, _u: Any, msg: Any) -> None:
        if not msg.payload or msg.topic in (self.down, self.topics.round_params):
            return  # pushed parameters: received (the broker's cost), not needed (a fixed delta)
        parsed = parse_message(msg.payload)
        if isinstance(parsed, RoundTask) and msg.topic == self.topics.round_current:
            self.task = parsed
        elif isinstance(parsed, Invitation):
            self.invitation = parsed
        elif isinstance(parsed, FetchRequest) and parsed.sha256 == self.ref.sha256:
            for i in parsed.indices:
                frame = encode_frame(self.ref, i, chunk_bytes(self.blob, i))
                client.publish(self.topics.agent_up_chunk(self.id), frame, qos=1)
            return
        else:
            return  # acks: nothing to do
        t = self.task
        if t is None or t.state != "open":
            return
        if self.id not in t.participants and not invites(self.invitation, t, self.id):
            return  # (a participant list: the baseline orchestrator, before invitations)
        self.invited_seen.setdefault(t.round, time.time())
        if (t.run_id, t.round) in self.answered:
            return
        self.answered.add((t.run_id, t.round))
        offer = UpdateOffer(
            msg_id=new_msg_id(),
            agent=self.id,
            run_id=t.run_id,
            round=t.round,
            model_version=t.model_version,
            blob=self.ref,
            num_samples=100,
            metrics={"train_loss": 1.0},
            inline=self.inline if 0 < self.ref.size <= t.inline_max_bytes else "",
        )
        client.publish(self.topics.agent_up_msg(self.id), offer.encode(), qos=1)


def epoll_worker(
    url: str,
    creds: list[tuple[str, str]],
    blob: bytes,
    connect_timeout: float,
    run_seconds: float,
    ready: mp.Queue,
    stop: Any,
    results: mp.Queue,
    inline: bool = True,
) -> None:
    """Run ``creds`` devices on one epoll loop until ``stop``; report when each saw its rounds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one descriptor per device
    parsed = urlparse(url)
    devices = [
        EpollDevice(parsed.hostname or "", parsed.port or 1883, a, p, blob, inline)
        for a, p in creds
    ]
    sel = selectors.DefaultSelector()
    by_fd: dict[int, EpollDevice] = {}

    def attach(d: EpollDevice) -> None:
        sock = d.client.socket()
        if sock is not None:
            sel.register(sock, selectors.EVENT_READ, d)
            by_fd[sock.fileno()] = d

    t0 = time.monotonic()
    for i, d in enumerate(devices):
        d.connect()
        attach(d)
        if i % 50 == 49:  # let the broker's listen backlog drain
            _turn(sel, devices, 0.0)
    end = t0 + connect_timeout
    while not all(d.connected for d in devices):
        if time.monotonic() > end:
            missing = sum(not d.connected for d in devices)
            ready.put(("error", f"{missing} of {len(devices)} devices did not connect"))
            return
        _turn(sel, devices, 0.05)
    ready.put(("ok", time.monotonic() - t0))
    last_misc = time.monotonic()
    end = time.monotonic() + run_seconds
    while not stop.is_set() and time.monotonic() < end:
        _turn(sel, devices, 0.05)
        if time.monotonic() - last_misc > 5:
            for d in devices:
                d.client.loop_misc()
            last_misc = time.monotonic()
    seen: dict[str, list[float]] = {}
    for d in devices:
        for rnd, ts in d.invited_seen.items():
            seen.setdefault(str(rnd), []).append(ts)
    results.put(seen)
    for d in devices:
        d.client.disconnect()
    _turn(sel, devices, 0.1)


def _turn(sel: selectors.BaseSelector, devices: list[EpollDevice], timeout: float) -> None:
    """One loop turn: read what arrived, then write what is queued (callbacks queue writes)."""
    for key, _mask in sel.select(timeout):
        key.data.client.loop_read()
    for d in devices:
        if d.client.want_write():
            d.client.loop_write()

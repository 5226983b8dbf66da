"""Simulated devices for bench/fleet_simulator.py: real MQTT clients, real ONNX Runtime training.

Each ``SimDevice`` speaks the real wire protocol over its own ``MqttLink`` (status with Last
Will, round tasks or slot requests, chunked pulls of the global parameters, chunked deltas
served on request, acks) and trains the digits MLP on its own rows with the agent's
``ort-training`` backend (one backend per worker process, shared in turn). Time is compressed:
a device's training takes ``base_seconds x speed`` of real sleep after the real compute (a
"pi" is 5x slower than a "laptop"); availability follows a profile (random on/off, diurnal)
and a device may drop out mid-training (goes offline, answers nothing).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass

import numpy as np

from fedge.agent.backends import create_backend
from fedge.agent.fetches import PUSH_GRACE_SECONDS
from fedge.protocol.async_messages import AsyncAnnounce, SlotRequest
from fedge.protocol.chunks import blob_ref, chunk_bytes, decode_frame, encode_frame
from fedge.protocol.invitations import Invitation, as_seen_by
from fedge.protocol.messages import (
    Ack,
    FetchRequest,
    RoundTask,
    Status,
    UpdateOffer,
    new_msg_id,
    parse_message,
)
from fedge.protocol.mqtt_link import MqttLink, MqttSettings
from fedge.protocol.tensors import decode_tensors, encode_tensors
from fedge.protocol.topics import Topics
from fedge.protocol.transfer import PullTransfer


@dataclass(frozen=True)
class Profile:
    """How a fleet behaves (compressed time: seconds here stand for minutes or hours)."""

    availability: str = "diurnal"  # always | random | diurnal
    on_seconds: float = 40.0  # random: mean on period
    off_seconds: float = 20.0  # random: mean off period
    day_seconds: float = 60.0  # diurnal: one compressed day
    pi_fraction: float = 0.3  # share of devices of the slow class
    pi_slowdown: float = 5.0
    base_seconds: float = 1.0  # a laptop's training time per job
    dropout: float = 0.1  # chance a job is abandoned mid-training (device goes offline)


class SimDevice:
    def __init__(
        self,
        url: str,
        agent_id: str,
        password: str,
        x: np.ndarray,
        y: np.ndarray,
        profile: Profile,
        rng: random.Random,
        *,
        federation: str = "demo",
        link_factory=None,
    ) -> None:
        self.id = agent_id
        self.x, self.y = x, y
        self.profile = profile
        self.rng = rng
        self.speed = profile.pi_slowdown if rng.random() < profile.pi_fraction else 1.0
        self.phase = rng.random() * 2 * math.pi
        self.topics = Topics(federation)
        will = Status(agent=agent_id, state="offline", backend="sim").encode()
        if link_factory is not None:  # bench/fleet_epoll.py: many devices on one loop
            self.link = link_factory(
                url, agent_id, password, (self.topics.agent_status(agent_id), will)
            )
        else:
            self.link = MqttLink(
                MqttSettings(url=url, username=agent_id, password=password, protocol="5"),
                client_id=agent_id,
                will=(self.topics.agent_status(agent_id), will),
            )
        self.online = False  # what the device last announced
        self.powered = False  # random profile: the current on/off period
        self.next_flip = 0.0
        self.back_at = 0.0
        self.task: RoundTask | None = None
        self.broadcast: RoundTask | None = None  # round/current (synchronous runs)
        self.invitation: Invitation | None = None
        self.announce: AsyncAnnounce | None = None
        self.done: set[tuple[str, int]] = set()  # (run, round or slot) already handled
        self.pull: PullTransfer | None = None
        self.pull_ask_at = 0.0  # pushed parameters not complete by then: ask for them
        self.held: list = []  # pushed chunks that came before their task
        self.params: dict[str, np.ndarray] | None = None
        self.busy_until = 0.0
        self.drop_at = 0.0
        self.offered: dict[str, bytes] = {}  # sha256 -> delta blob
        self.offered_at = 0.0
        self.delta: dict[str, np.ndarray] = {}
        self.last_request = float("-inf")
        self.fetches = [0, 0]  # FetchRequests for a delta no longer held / served
        self.next_look = 0.0  # bench/fleet_epoll.py: when an idle device is looked at again
        self.bytes_down = 0
        self.bytes_up = 0
        self.jobs = 0
        self.dropped = 0

    # ---- connection ----
    def begin(self) -> None:
        for t in (
            self.topics.round_current,
            self.topics.round_async,
            self.topics.agent_cmd(self.id),
            self.topics.agent_down(self.id),
            self.topics.agent_invite(self.id),
        ):
            self.link.subscribe(t)
        self.link.start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.bytes_up += len(payload)
        self.link.publish(topic, payload, retain=retain)

    def status(self, state: str) -> None:
        s = Status(agent=self.id, state=state, backend="sim", num_samples=len(self.y))
        self.publish(self.topics.agent_status(self.id), s.encode(), retain=True)

    # ---- availability ----
    def available(self, t: float) -> bool:
        p = self.profile
        if p.availability == "always":
            return True
        if p.availability == "diurnal":  # on while "awake": ~60% of a day, phase per device
            return math.sin(2 * math.pi * t / p.day_seconds + self.phase) > -0.3
        if t >= self.next_flip:  # random on/off with exponential periods
            self.powered = not self.powered if self.next_flip else self.rng.random() < 0.67
            mean = p.on_seconds if self.powered else p.off_seconds
            self.next_flip = t + self.rng.expovariate(1 / mean)
        return self.powered

    def _go(self, online: bool) -> None:
        self.online = online
        self.status("idle" if online else "offline")
        if not online:  # powered off: whatever it was doing is lost
            self.task, self.pull, self.params, self.busy_until = None, None, None, 0.0
            self.offered = {}

    # ---- the loop ----
    def step(self, t: float, now: float, trainer: Trainer) -> None:
        """``t``: seconds since the fleet started (profiles); ``now``: wall clock."""
        avail = self.available(t) and not (self.drop_at <= now < self.back_at)
        if avail != self.online:
            self._go(avail)
        while (item := self.link.get(timeout=0)) is not None:
            self._on_message(*item)
        if not avail:
            return
        if self.pull is not None:
            if self.pull_ask_at and now >= self.pull_ask_at:
                self.pull_ask_at = 0.0
                self.pull.start()
            self.pull.tick()
        task = self.task
        if task is not None and self.params is not None and self.busy_until == 0.0:
            self._train(task, now, trainer)
        if task is not None and self.busy_until and now >= self.busy_until:
            self._offer(task)
        if self.offered and now - self.offered_at > 30.0 * self.profile.base_seconds:
            # no ack came: give it up
            self.offered = {}
        if self.announce is not None and self.announce.state == "open":
            self._maybe_ask(now)

    def _maybe_ask(self, now: float) -> None:
        a = self.announce
        if a is None or self.task is not None or self.offered or a.slots_free <= 0:
            return
        if now - self.last_request < max(0.2, a.retry_after):
            return
        self.last_request = now
        req = SlotRequest(msg_id=new_msg_id(), agent=self.id, run_id=a.run_id)
        self.publish(self.topics.agent_up_msg(self.id), req.encode())

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.bytes_down += len(payload)
        if topic == self.topics.agent_down(self.id):
            chunk = decode_frame(payload)
            if self.pull is None:  # pushed before its task was seen (as the agent, hold it)
                self.held = [c for c in self.held[-7:] if c.sha256 == chunk.sha256] + [chunk]
            elif self.pull.on_chunk(chunk):
                self.params = decode_tensors(self.pull.result or b"")
                self.pull, self.pull_ask_at = None, 0.0
            return
        if not payload:
            return
        if topic in (self.topics.round_current, self.topics.round_async):
            msg = _parse_broadcast(payload)
        else:
            msg = parse_message(payload)
        if isinstance(msg, AsyncAnnounce):
            self.announce = msg
        elif isinstance(msg, RoundTask):
            if topic == self.topics.round_current:
                self.broadcast = msg
            task = as_seen_by(msg, self.invitation, self.id)
            if task is not None:
                self._on_task(task)
        elif isinstance(msg, Invitation):
            self.invitation = msg
            task = as_seen_by(self.broadcast, msg, self.id)
            if task is not None:
                self._on_task(task)
        elif isinstance(msg, FetchRequest):
            blob = self.offered.get(msg.sha256)
            self.fetches[blob is not None] += 1
            if blob is not None:
                ref = blob_ref(blob)
                for i in msg.indices:
                    frame = encode_frame(ref, i, chunk_bytes(blob, i))
                    self.publish(self.topics.agent_up_chunk(self.id), frame)
        elif isinstance(msg, Ack):
            self.offered.pop(msg.sha256, None)

    def _on_task(self, task: RoundTask) -> None:
        key = (task.run_id, task.round)
        if task.state != "open" or self.id not in task.participants or key in self.done:
            return
        if self.task is not None or self.offered:
            return
        self.done.add(key)
        self.task = task
        self.params = None

        def request(indices: list[int], sha: str = task.params.sha256) -> None:
            req = FetchRequest(msg_id=new_msg_id(), agent=self.id, sha256=sha, indices=indices)
            self.publish(self.topics.agent_up_msg(self.id), req.encode())

        self.pull = PullTransfer(task.params, request)
        held, self.held = self.held, []
        for chunk in held:
            if self.pull.on_chunk(chunk):
                self.params = decode_tensors(self.pull.result or b"")
                self.pull = None
                return
        if task.params_pushed:  # they follow the task unasked; asked for if they do not come
            self.pull_ask_at = time.time() + PUSH_GRACE_SECONDS
        else:
            self.pull.start()

    def _train(self, task: RoundTask, now: float, trainer: Trainer) -> None:
        params = self.params or {}
        delta = trainer.train(params, self.x, self.y, task)
        self.delta = delta
        duration = self.profile.base_seconds * self.speed * self.rng.uniform(0.8, 1.2)
        self.busy_until = now + duration
        self.jobs += 1
        if self.rng.random() < self.profile.dropout:  # goes away mid-training, back later
            self.dropped += 1
            self.drop_at = now + duration * self.rng.random()
            self.back_at = self.drop_at + 3 * duration
            self.busy_until = self.back_at + duration  # never reached: lost when it goes off

    def _offer(self, task: RoundTask) -> None:
        blob = encode_tensors(self.delta)
        ref = blob_ref(blob)
        self.offered = {ref.sha256: blob}
        self.offered_at = time.time()
        offer = UpdateOffer(
            msg_id=new_msg_id(),
            agent=self.id,
            run_id=task.run_id,
            round=task.round,
            model_version=task.model_version,
            blob=ref,
            num_samples=len(self.y),
        )
        self.publish(self.topics.agent_up_msg(self.id), offer.encode())
        self.task, self.params, self.busy_until = None, None, 0.0


_BROADCASTS: dict[bytes, object] = {}


def _parse_broadcast(payload: bytes):
    """The round task / announcement every device of a worker receives: parsed once per worker
    (validating one costs ~2 ms; 500 devices on one core would spend a second a round on it).
    Messages are frozen dataclasses, so sharing one is safe."""
    msg = _BROADCASTS.get(payload)
    if msg is None:
        if len(_BROADCASTS) > 64:
            _BROADCASTS.clear()
        msg = _BROADCASTS[payload] = parse_message(payload)
    return msg


class Trainer:
    """One ort-training backend per worker process, used by its devices in turn."""

    def __init__(self, bundle, *, epochs: int, batch_size: int) -> None:
        self.bundle = bundle
        self.backend = create_backend("ort-training")
        self.epochs = epochs
        self.batch_size = batch_size
        self.seconds = 0.0

    def train(self, params, x, y, task: RoundTask) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        self.backend.load(self.bundle)  # fresh optimizer state, as on a device
        self.backend.set_parameters(params)
        seed = int.from_bytes(hashlib.sha256(f"{task.round}/{len(y)}".encode()).digest()[:4], "big")
        self.backend.train(x, y, epochs=self.epochs, batch_size=self.batch_size, seed=seed)
        local = self.backend.get_parameters()
        self.seconds += time.perf_counter() - t0
        return {n: (local[n] - params[n]).astype(params[n].dtype) for n in params}

"""A scripted MQTT agent (no training) for orchestrator tests and benchmarks.

It speaks the real protocol through ``MqttLink``: a retained status with a Last Will, the
round task and its own invitation (``invited``), offers
(``UpdateOffer``) and serves the offered delta in chunks when the orchestrator asks.
"""

from __future__ import annotations

import time

import numpy as np

from fedge.protocol.chunks import blob_ref, chunk_bytes, encode_frame
from fedge.protocol.invitations import Invitation, invites
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
from fedge.protocol.tensors import encode_tensors
from fedge.protocol.topics import Topics


class FakeAgent:
    def __init__(
        self,
        url: str,
        agent_id: str,
        password: str,
        *,
        federation: str = "demo",
        samples: int = 100,
    ) -> None:
        self.id = agent_id
        self.samples = samples
        self.topics = Topics(federation)
        offline = Status(agent=agent_id, state="offline", backend="fake").encode()
        self.link = MqttLink(
            MqttSettings(url=url, username=agent_id, password=password, protocol="5"),
            client_id=agent_id,
            will=(self.topics.agent_status(agent_id), offline),
        )
        self.task: RoundTask | None = None
        # (round, state) -> time.time() when that RoundTask first arrived (benchmarks).
        self.task_seen: dict[tuple[int, str], float] = {}
        self.invitation: Invitation | None = None
        # round -> time.time() when this device first held both the open task and its invitation
        self.invited_seen: dict[int, float] = {}
        self.blobs: dict[str, bytes] = {}
        self.acks: list[Ack] = []

    def start(self, connect_timeout: float = 10.0) -> FakeAgent:
        """Connect, wait for the broker and publish an idle status."""
        self.begin()
        return self.finish_start(connect_timeout)

    def begin(self) -> None:
        """Start connecting in the background (so a fleet can connect in parallel)."""
        for t in (
            self.topics.round_current,
            self.topics.agent_cmd(self.id),
            self.topics.agent_invite(self.id),
        ):
            self.link.subscribe(t)
        self.link.start()

    def finish_start(self, connect_timeout: float = 10.0) -> FakeAgent:
        """Wait for the connection begun by ``begin()``, then publish an idle status."""
        if not self.link.wait_connected(connect_timeout):
            raise RuntimeError(f"{self.id} cannot connect within {connect_timeout:.0f} s")
        status = Status(agent=self.id, state="idle", backend="fake", num_samples=self.samples)
        self.link.publish(self.topics.agent_status(self.id), status.encode(), retain=True)
        return self

    @property
    def invited(self) -> bool:
        """Whether the open round includes this device (its invitation names the round)."""
        t = self.task
        if t is None or t.state != "open":
            return False
        return self.id in t.participants or invites(self.invitation, t, self.id)

    def stop(self) -> None:
        self.link.stop()

    def pump(self, timeout: float = 0.05) -> None:
        """Handle queued messages: remember the round, serve chunks, collect acks."""
        end = time.monotonic() + timeout
        while True:
            item = self.link.get(timeout=max(0.0, end - time.monotonic()))
            if item is None:
                return
            topic, payload = item
            if topic == self.topics.round_current and payload:
                self.task = parse_message(payload, RoundTask)
                self.task_seen.setdefault((self.task.round, self.task.state), time.time())
                self._note_invited()
                continue
            if topic == self.topics.agent_invite(self.id):
                invitation = parse_message(payload, Invitation) if payload else None
                self.invitation = invitation if isinstance(invitation, Invitation) else None
                self._note_invited()
                continue
            msg = parse_message(payload)
            if isinstance(msg, FetchRequest) and msg.sha256 in self.blobs:
                blob = self.blobs[msg.sha256]
                ref = blob_ref(blob)
                for i in msg.indices:
                    frame = encode_frame(ref, i, chunk_bytes(blob, i))
                    self.link.publish(self.topics.agent_up_chunk(self.id), frame)
            elif isinstance(msg, Ack):
                self.acks.append(msg)

    def _note_invited(self) -> None:
        if self.invited and self.task is not None:
            self.invited_seen.setdefault(self.task.round, time.time())

    def offer(
        self,
        delta: dict[str, np.ndarray] | bytes,
        *,
        round_no: int | None = None,
        model_version: int | None = None,
        msg_id: str | None = None,
        metrics: dict[str, float] | None = None,
    ) -> UpdateOffer:
        """Offer ``delta`` for the current round (or the one given); returns the offer sent."""
        task = self.task
        assert task is not None, "no round seen yet"
        blob = delta if isinstance(delta, bytes) else encode_tensors(delta)
        self.blobs[blob_ref(blob).sha256] = blob
        offer = UpdateOffer(
            msg_id=msg_id or new_msg_id(),
            agent=self.id,
            run_id=task.run_id,
            round=task.round if round_no is None else round_no,
            model_version=task.model_version if model_version is None else model_version,
            blob=blob_ref(blob),
            num_samples=self.samples,
            metrics=metrics or {"train_loss": 1.0},
        )
        self.resend(offer)
        return offer

    def resend(self, offer: UpdateOffer) -> None:
        self.link.publish(self.topics.agent_up_msg(self.id), offer.encode())

"""A scripted device on an ``InMemoryBroker`` (no training) for orchestrator unit tests.

It speaks the real protocol: a retained Status, the retained RoundTask and its own retained
invitation (``invited`` holds when the two name the same round), a pull of the global
parameters (``PullTransfer``), offers of a delta served in chunks by ``BlobServer``, aborts.
``settle`` moves every queued message between an orchestrator and its devices until all are
quiet, in one thread and without sleeping.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fedge.protocol.blob_server import BlobServer
from fedge.protocol.chunks import blob_ref, decode_frame
from fedge.protocol.invitations import Invitation, invites
from fedge.protocol.messages import (
    Ack,
    FetchRequest,
    RoundAbort,
    RoundTask,
    Status,
    UpdateOffer,
    new_msg_id,
    parse_message,
)
from fedge.protocol.tensors import decode_tensors, encode_tensors
from fedge.protocol.topics import Topics
from fedge.protocol.transfer import PullTransfer
from fedge.protocol.transport import InMemoryBroker


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryDevice:
    def __init__(
        self, broker: InMemoryBroker, agent_id: str, *, federation: str = "demo", samples: int = 10
    ) -> None:
        self.id = agent_id
        self.samples = samples
        self.topics = Topics(federation)
        self.link = broker.client(agent_id)
        for t in (
            self.topics.round_current,
            self.topics.round_params,
            self.topics.agent_cmd(agent_id),
            self.topics.agent_down(agent_id),
            self.topics.agent_invite(agent_id),
        ):
            self.link.subscribe(t)
        self.link.start()
        self.blobs = BlobServer(self.link.publish)
        self.task: RoundTask | None = None
        self.invitation: Invitation | None = None
        self.params: dict[str, np.ndarray] | None = None
        self._pull: PullTransfer | None = None
        self.acks: list[Ack] = []
        self.frames_received = 0
        self.fetches_served = 0  # FetchRequests the orchestrator sent for this device's deltas
        self.status("idle")

    def status(self, state: str) -> None:
        s = Status(agent=self.id, state=state, backend="fake", num_samples=self.samples)
        self.link.publish(self.topics.agent_status(self.id), s.encode(), retain=True)

    @property
    def invited(self) -> bool:
        t = self.task
        if t is None or t.state != "open":
            return False
        return self.id in t.participants or invites(self.invitation, t, self.id)

    def fetch_params(self) -> None:
        """Start pulling the round's global parameters (they arrive as ``pump`` runs)."""
        if self.task is None:
            raise RuntimeError(f"{self.id} has seen no round yet")

        def request(indices: list[int], sha: str = self.task.params.sha256) -> None:
            req = FetchRequest(msg_id=new_msg_id(), agent=self.id, sha256=sha, indices=indices)
            self.link.publish(self.topics.agent_up_msg(self.id), req.encode())

        self.params = None
        self._pull = PullTransfer(self.task.params, request)
        self._pull.start()

    def _is_pushed_params(self, chunk) -> bool:  # noqa: ANN001 - a protocol Chunk
        """The round's parameters pushed with the task (a single-chunk bundle is not)."""
        return (
            self.task is not None
            and chunk.sha256 == self.task.params.sha256
            and hashlib.sha256(chunk.data).hexdigest() == chunk.sha256
        )

    def pump(self) -> int:
        """Handle every queued message; returns how many there were."""
        n = 0
        while (item := self.link.get(timeout=0)) is not None:
            n += 1
            topic, payload = item
            if topic == self.topics.round_params and not payload:
                continue  # a shared parameters frame cleared
            if topic == self.topics.round_current:
                self.task = parse_message(payload, RoundTask) if payload else None
            elif topic == self.topics.agent_invite(self.id):
                invitation = parse_message(payload, Invitation) if payload else None
                self.invitation = invitation if isinstance(invitation, Invitation) else None
            elif topic == self.topics.agent_down(self.id) or topic == self.topics.round_params:
                self.frames_received += 1
                chunk = decode_frame(payload)
                if self._pull is not None and self._pull.on_chunk(chunk):
                    self.params = decode_tensors(self._pull.result or b"")
                    self._pull = None
                elif self._pull is None and chunk.count == 1 and self._is_pushed_params(chunk):
                    self.params = decode_tensors(chunk.data)
            else:
                msg = parse_message(payload)
                if isinstance(msg, FetchRequest):
                    self.fetches_served += 1
                    self.blobs.serve(msg, self.topics.agent_up_chunk(self.id))
                elif isinstance(msg, Ack):
                    self.acks.append(msg)
        return n

    def offer(
        self,
        delta: dict[str, np.ndarray] | bytes,
        *,
        round_no: int | None = None,
        model_version: int | None = None,
        msg_id: str | None = None,
        metrics: dict[str, float] | None = None,
        inline: bool | bytes = False,
    ) -> UpdateOffer:
        """Offer ``delta`` for the seen round (or the one given) and serve it when asked.
        ``inline``: carry it in the offer (True), or carry these other bytes (a forgery)."""
        task = self.task
        if task is None:
            raise RuntimeError(f"{self.id} has seen no round yet")
        blob = delta if isinstance(delta, bytes) else encode_tensors(delta)
        self.blobs.offer(blob)
        offer = UpdateOffer(
            msg_id=msg_id or new_msg_id(),
            agent=self.id,
            run_id=task.run_id,
            round=task.round if round_no is None else round_no,
            model_version=task.model_version if model_version is None else model_version,
            blob=blob_ref(blob),
            num_samples=self.samples,
            metrics=metrics or {"train_loss": 1.0},
            **(
                {"inline": base64.b64encode(blob if inline is True else inline).decode()}
                if inline
                else {}
            ),
        )
        self.send(offer)
        return offer

    def abort(self, reason: str = "battery low", *, round_no: int | None = None) -> None:
        task = self.task
        if task is None:
            raise RuntimeError(f"{self.id} has seen no round yet")
        rnd = task.round if round_no is None else round_no
        self.send(RoundAbort(new_msg_id(), self.id, task.run_id, rnd, reason))

    def send(self, msg: Any) -> None:
        self.link.publish(self.topics.agent_up_msg(self.id), msg.encode())


def start_orchestrator(
    orchestrator_class: Any,
    cfg: Any,
    broker: InMemoryBroker,
    bundle: Any,
    clock: FakeClock,
    devices: Iterable[MemoryDevice],
) -> Any:
    """An orchestrator of ``orchestrator_class`` on ``broker``'s in-memory transport, started
    and settled with ``devices``: the set-up every in-memory federation of the tests shares."""
    orch = orchestrator_class(
        cfg, transport=broker.client(cfg.client_id), bundle=bundle, clock=clock
    )
    orch.start()
    settle(orch, devices)
    return orch


def settle(orch: Any, devices: Iterable[MemoryDevice], max_steps: int = 1000) -> None:
    """Deliver messages back and forth (and tick the orchestrator) until nothing moves."""
    devices = list(devices)
    for _ in range(max_steps):
        moved = 0
        while (item := orch.transport.get(timeout=0)) is not None:
            orch.handle(*item, retained=orch.transport.last_was_retained())
            moved += 1
        orch.tick()
        moved += sum(d.pump() for d in devices)
        if not moved and not orch.transport.pending():
            return
    raise RuntimeError(f"messages still moving after {max_steps} steps")


class MemoryFederation:
    """A real Orchestrator (SQLite store, toy bundle, robust weighting off: exact FedAvg) with
    ``devices`` scripted devices on one in-memory broker and a fake clock."""

    def __init__(self, tmp_path: Path, devices: int = 2, **rounds: object) -> None:
        from fedge.orchestrator.config import OrchestratorConfig, RobustSettings, RoundSettings
        from fedge.orchestrator.server import Orchestrator
        from fedge.protocol.bundle import load_bundle

        from .toy_bundle import write_toy_bundle

        self.broker = InMemoryBroker()
        self.clock = FakeClock()
        bundle = load_bundle(write_toy_bundle(tmp_path / "bundle"))
        settings = {"rounds": 1, "min_devices": devices, "deadline_seconds": 60.0} | rounds
        robust = RobustSettings(sample_cap_multiple=0, max_claimed_samples=0, norm_multiple=0)
        cfg = OrchestratorConfig(
            database=str(tmp_path / "o.db"), rounds=RoundSettings(**settings), robust=robust
        )
        self.devices = [MemoryDevice(self.broker, f"dev-{i}") for i in range(devices)]
        self.orch = Orchestrator(
            cfg, transport=self.broker.client("fedge-orchestrator"), bundle=bundle, clock=self.clock
        )
        self.orch.start()
        self.settle()

    def settle(self) -> None:
        settle(self.orch, self.devices)

    def version(self, v: int) -> dict[str, np.ndarray]:
        return decode_tensors(self.orch.store.version_params(self.orch.run_id, v))

    def round(self, n: int = 1):
        return self.orch.store.get_round(self.orch.run_id, n)

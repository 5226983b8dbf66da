"""An in-process orchestrator, a fake clock and a fake training backend for driving a real
Agent over the in-memory transport (tests/unit/test_agent_rounds.py)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedge.agent.backends.base import EvalResult, TrainingBackend
from fedge.protocol.blob_server import BlobServer
from fedge.protocol.bundle import load_bundle, pack_bundle
from fedge.protocol.chunks import decode_frame
from fedge.protocol.invitations import Invitation
from fedge.protocol.messages import (
    Ack,
    EvalReport,
    FetchRequest,
    RoundAbort,
    RoundTask,
    StatsReport,
    TrainConfig,
    UpdateOffer,
    new_msg_id,
    parse_message,
)
from fedge.protocol.tensors import encode_tensors
from fedge.protocol.topics import Topics
from fedge.protocol.transfer import PullTransfer
from fedge.protocol.transport import InMemoryBroker

from .toy_bundle import PARAMS

T0 = 1_800_000_000.0
STEP = np.float32(0.01)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - T0

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeBackend(TrainingBackend):
    """Each step lowers every trainable parameter by 0.01; ``on_step(n)`` runs before step n."""

    name = "fake"

    def __init__(self, on_step: Callable[[int], None] = lambda n: None) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.trainable: list[str] = []
        self.steps = 0
        self.loads = 0
        self.prepared = 0  # prepare() calls: the next round's sessions built ahead
        self.on_step = on_step

    def load(
        self, bundle, *, learning_rate: float | None = None, optimizer: str = "", weight_decay=None
    ) -> None:
        from fedge.agent.backends.optimizer_choice import choose_optimizer

        # the real backends' choice: an optimizer the bundle lacks raises, as on a device
        choose_optimizer(
            bundle, optimizer=optimizer, learning_rate=learning_rate, weight_decay=weight_decay
        )
        self.loads += 1
        self.trainable = bundle.trainable_names

    def prepare(self, bundle) -> None:
        self.prepared += 1

    def set_parameters(self, params) -> None:
        self.params = {k: v.copy() for k, v in params.items()}

    def get_parameters(self):
        return {k: v.copy() for k, v in self.params.items()}

    def _begin_training(self, seed: int = 0) -> None:
        pass

    def _train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        self.steps += 1
        self.on_step(self.steps)
        for name in self.trainable:
            self.params[name] = self.params[name] - STEP
        return 1.0

    def _trainable_names(self) -> list[str]:
        return self.trainable

    def _learning_rate(self) -> float:
        return 0.1

    def _parameter(self, name: str) -> np.ndarray:
        return self.params[name]

    def _set_parameter(self, name: str, value: np.ndarray) -> None:
        self.params[name] = value

    def evaluate(self, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> EvalResult:
        return EvalResult(loss=0.5, accuracy=0.75, samples=len(y))


class ScriptedOrchestrator:
    """Publishes round tasks, serves the bundle and parameters, fetches and acks deltas."""

    def __init__(self, broker: InMemoryBroker, bundle_dir: Path, clock: FakeClock) -> None:
        self.topics = Topics("demo")
        self.clock = clock
        self.link = broker.client("fedge-orchestrator")
        self.link.subscribe(self.topics.all_agent_up)
        self.link.start()
        self.server = BlobServer(lambda topic, frame: self.link.publish(topic, frame))
        self.archive = pack_bundle(bundle_dir)
        self.bundle_hash = load_bundle(bundle_dir).content_hash
        self.bundle_ref = self.server.offer(self.archive)
        self.params_ref = self.server.offer(encode_tensors(PARAMS))
        self.requests: list[FetchRequest] = []
        self.offers: list[UpdateOffer] = []
        self.aborts: list[RoundAbort] = []
        self.reports: list[EvalReport] = []
        self.stats: list[StatsReport] = []  # statistics rounds (federated standardization)
        self.deltas: dict[str, bytes] = {}
        self.auto_fetch = True
        self.auto_ack = True
        self._pulls: dict[str, tuple[UpdateOffer, PullTransfer]] = {}

    def task(self, round_no: int = 1, **fields) -> RoundTask:
        base = dict(
            run_id="run-1",
            round=round_no,
            model_version=round_no - 1,
            state="open",
            bundle_hash=self.bundle_hash,
            bundle=self.bundle_ref,
            params=self.params_ref,
            participants=["dev-0"],
            config=TrainConfig(local_epochs=1, batch_size=8),
            deadline=self.clock.time() + 60.0,
        )
        return RoundTask(**(base | fields))

    def publish_task(self, task: RoundTask) -> bytes:
        payload = task.encode()
        self.link.publish(self.topics.round_current, payload, retain=True)
        return payload

    def invite(self, agent_id: str, round_no: int = 1, run_id: str = "run-1") -> None:
        """A retained invitation on ``agent_id``'s own topic, as the real orchestrator sends
        with a task that names no one (``task(participants=[], invited=n)``)."""
        inv = Invitation(run_id=run_id, round=round_no, agent=agent_id)
        self.link.publish(self.topics.agent_invite(agent_id), inv.encode(), retain=True)

    def process(self) -> bool:
        """Handle everything received; True if anything was."""
        seen = False
        while (item := self.link.get(0)) is not None:
            seen = True
            topic, payload = item
            agent_id, kind = self.topics.parse_agent_topic(topic)
            if kind == "up/chunk":
                self._on_chunk(agent_id, payload)
            elif kind == "up/msg":
                self._on_msg(agent_id, parse_message(payload))
        return seen

    def _on_msg(self, agent_id: str, msg) -> None:
        if isinstance(msg, FetchRequest):
            self.requests.append(msg)
            self.server.serve(msg, self.topics.agent_down(agent_id))
        elif isinstance(msg, UpdateOffer):
            self.offers.append(msg)
            if msg.inline:  # a small delta carried in the offer: no fetch
                self.deltas[msg.blob.sha256] = base64.b64decode(msg.inline)
                if self.auto_ack:
                    self.ack(agent_id, msg, accepted=True)
            elif self.auto_fetch and msg.blob.sha256 not in self.deltas:
                self.fetch(agent_id, msg)
        elif isinstance(msg, RoundAbort):
            self.aborts.append(msg)
        elif isinstance(msg, EvalReport):
            self.reports.append(msg)
        elif isinstance(msg, StatsReport):
            self.stats.append(msg)

    def push(self, agent_id: str, ref, frame: bytes | None = None) -> None:
        """Publish an object's frames unasked on the device's down topic (or this frame)."""
        if frame is not None:
            self.link.publish(self.topics.agent_down(agent_id), frame)
            return
        indices = list(range(ref.chunks))
        self.server.serve(
            FetchRequest(new_msg_id(), agent_id, ref.sha256, indices),
            self.topics.agent_down(agent_id),
        )

    def share(self, ref) -> None:
        """Publish an object's frames on round/params, as a large round's parameters go."""
        indices = list(range(ref.chunks))
        self.server.serve(
            FetchRequest(new_msg_id(), "all", ref.sha256, indices), self.topics.round_params
        )

    def fetch(self, agent_id: str, offer: UpdateOffer) -> None:
        def request(indices: list[int]) -> None:
            req = FetchRequest(
                msg_id=new_msg_id(), agent=agent_id, sha256=offer.blob.sha256, indices=indices
            )
            self.link.publish(self.topics.agent_cmd(agent_id), req.encode())

        transfer = PullTransfer(offer.blob, request, clock=self.clock.monotonic)
        self._pulls[offer.blob.sha256] = (offer, transfer)
        transfer.start()

    def _on_chunk(self, agent_id: str, payload: bytes) -> None:
        chunk = decode_frame(payload)
        offer, transfer = self._pulls[chunk.sha256]
        if transfer.on_chunk(chunk):
            self.deltas[chunk.sha256] = transfer.result or b""
            if self.auto_ack:
                self.ack(agent_id, offer, accepted=True)

    def ack(self, agent_id: str, offer: UpdateOffer, *, accepted: bool, reason: str = "") -> None:
        ack = Ack(
            msg_id=new_msg_id(),
            agent=agent_id,
            run_id=offer.run_id,
            round=offer.round,
            sha256=offer.blob.sha256,
            accepted=accepted,
            reason=reason,
        )
        self.link.publish(self.topics.agent_cmd(agent_id), ack.encode())

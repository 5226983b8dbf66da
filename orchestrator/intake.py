"""Update intake: offers, chunked uploads, validation, acks. Every outcome is recorded.

An update counts only if it is for the open round of this run, from a selected device, for
the current model version, arrives before the round closes, and passes ``validate_delta``.
Everything else is acked with the reason and recorded in the round's counters: ``rejected``
(bad update), ``late`` (round closed), ``duplicates`` (already counted).
Evaluation reports (federated evaluation rounds) count once per device and round; they are
acked with an empty sha256 so the device stops re-sending.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fedge.protocol.errors import TransferError
from fedge.protocol.messages import (
    Ack,
    EvalReport,
    FetchRequest,
    RoundAbort,
    UpdateOffer,
    new_msg_id,
)
from fedge.protocol.transfer import PullTransfer

from .validation import UpdateRejected, validate_delta

if TYPE_CHECKING:
    from .server import Orchestrator

log = logging.getLogger(__name__)


class UpdateIntake:
    def __init__(self, orch: Orchestrator) -> None:
        self.o = orch
        self.uploads: dict[tuple[str, str], tuple[PullTransfer, UpdateOffer]] = {}

    def tick(self) -> None:
        for key, (transfer, _offer) in list(self.uploads.items()):
            transfer.tick()
            if transfer.failed:
                log.warning("upload from %s failed: %s", key[0], transfer.failed)
                del self.uploads[key]

    def on_chunk(self, agent_id: str, chunk) -> None:
        entry = self.uploads.get((agent_id, chunk.sha256))
        if entry and entry[0].on_chunk(chunk):
            del self.uploads[(agent_id, chunk.sha256)]
            self._on_upload_complete(agent_id, entry[1], entry[0].result)

    def ack(self, offer: UpdateOffer, accepted: bool, reason: str = "") -> None:
        ack = Ack(
            msg_id=new_msg_id(),
            agent=offer.agent,
            run_id=offer.run_id,
            round=offer.round,
            sha256=offer.blob.sha256,
            accepted=accepted,
            reason=reason,
        )
        self.o.link.publish(self.o.topics.agent_cmd(offer.agent), ack.encode())

    def reject(self, offer: UpdateOffer, reason: str, counter: str = "rejected") -> None:
        o = self.o
        log.warning("round %d: update from %s %s: %s", offer.round, offer.agent, counter, reason)
        o.store.reject_update(
            offer.run_id,
            offer.round,
            offer.agent,
            offer.blob.sha256,
            reason,
            offer.blob.size,
            counter=counter,
        )
        o.metrics.inc("fedge_updates_total", status=counter)
        self.ack(offer, False, reason)

    def on_abort(self, agent_id: str, msg: RoundAbort) -> None:
        o = self.o
        r = o.current
        if not (
            o.first_time(f"abort/{msg.msg_id}")
            and r
            and msg.run_id == o.run_id
            and msg.round == r.round
        ):
            return
        if agent_id in o.store.answered_agents(o.run_id, r.round):
            return
        o.store.reject_update(o.run_id, r.round, agent_id, "", msg.reason, 0, counter="aborted")
        o.metrics.inc("fedge_updates_total", status="aborted")
        log.info("round %d: %s will not report: %s", msg.round, agent_id, msg.reason)

    def _ack_eval(self, msg: EvalReport, accepted: bool, reason: str = "") -> None:
        ack = Ack(
            msg_id=new_msg_id(),
            agent=msg.agent,
            run_id=msg.run_id,
            round=msg.round,
            sha256="",
            accepted=accepted,
            reason=reason,
        )
        self.o.link.publish(self.o.topics.agent_cmd(msg.agent), ack.encode())

    def on_eval_report(self, agent_id: str, msg: EvalReport) -> None:
        """Count a device's evaluation report once per (run, round, device)."""
        o = self.o
        r = o.current
        if r is None or msg.run_id != o.run_id or msg.round != r.round:
            if o.first_time(f"late/{msg.msg_id}") and o.store.get_round(msg.run_id, msg.round):
                o.store.count(msg.run_id, msg.round, "late")
                log.info("round %d: evaluation report from %s is late", msg.round, agent_id)
            self._ack_eval(msg, False, f"round {msg.round} is closed")
            return
        if r.kind != "evaluate" or agent_id not in r.participants:
            why = "not an evaluation round" if r.kind != "evaluate" else "device not selected"
            log.warning("round %d: evaluation report from %s ignored: %s", r.round, agent_id, why)
            self._ack_eval(msg, False, why)
            return
        if msg.model_version != r.model_version:
            self._ack_eval(msg, False, f"the round evaluates model v{r.model_version}")
            return
        if agent_id in o.store.answered_agents(o.run_id, r.round):  # a re-send, or aborted
            self._ack_eval(msg, True, "this device already answered the round")
            return
        if not o.store.add_eval_report(o.run_id, r.round, agent_id, msg.num_samples, msg.metrics):
            self._ack_eval(msg, True, "already counted")
            return
        r.reports += 1
        o.metrics.inc("fedge_updates_total", status="evaluated")
        log.info(
            "round %d: evaluation from %s counted (%d/%d, %d samples)",
            r.round,
            agent_id,
            r.reports,
            len(r.participants),
            msg.num_samples,
        )
        self._ack_eval(msg, True)

    def on_offer(self, agent_id: str, offer: UpdateOffer) -> None:
        o = self.o
        accepted_sha = o.store.accepted_update(offer.run_id, offer.round, agent_id)
        if accepted_sha is not None:  # counted already: a re-offer after a lost ack, or a duplicate
            if accepted_sha == offer.blob.sha256:
                if o.first_time(f"dup/{offer.msg_id}"):
                    o.store.count(offer.run_id, offer.round, "duplicates")
                    o.metrics.inc("fedge_updates_total", status="duplicate")
                self.ack(offer, True, "already counted")
            else:
                self.ack(offer, False, "another update from this device was already counted")
            return
        r = o.current
        if r is None or offer.run_id != o.run_id or offer.round != r.round:
            if o.first_time(f"late/{offer.msg_id}"):
                self.reject(offer, f"round {offer.round} is closed", counter="late")
            else:
                self.ack(offer, False, f"round {offer.round} is closed")
            return
        if r.kind == "evaluate":
            self.reject(offer, f"round {r.round} is a federated evaluation round (no training)")
            return
        if agent_id in o.store.answered_agents(o.run_id, r.round):
            self.ack(offer, False, "this device's update for the round was already refused")
            return
        if agent_id not in r.participants:
            self.reject(offer, "device was not selected for this round")
            return
        if offer.model_version != r.model_version:
            self.reject(
                offer,
                f"update is for model v{offer.model_version}, the round trains v{r.model_version}",
            )
            return
        key = (agent_id, offer.blob.sha256)
        if key in self.uploads:
            return
        limit = 4 * len(o.global_bytes) + (1 << 20)

        def request(
            indices: list[int], agent: str = agent_id, sha: str = offer.blob.sha256
        ) -> None:
            req = FetchRequest(msg_id=new_msg_id(), agent=agent, sha256=sha, indices=indices)
            o.link.publish(o.topics.agent_cmd(agent), req.encode())

        try:
            transfer = PullTransfer(offer.blob, request, max_bytes=limit)
        except TransferError as exc:
            self.reject(offer, str(exc))
            return
        self.uploads[key] = (transfer, offer)
        transfer.start()

    def _on_upload_complete(self, agent_id: str, offer: UpdateOffer, blob: bytes) -> None:
        o = self.o
        r = o.current
        if r is None or offer.round != r.round or offer.run_id != o.run_id:
            self.reject(offer, f"round {offer.round} closed during the upload", counter="late")
            return
        if o.store.accepted_update(o.run_id, r.round, agent_id) is not None:
            self.ack(offer, True, "already counted")
            return
        if r.goal and r.reports >= r.goal:
            self.reject(offer, f"round {r.round} already has its {r.goal} reports", counter="late")
            return
        try:
            validate_delta(blob, o.global_params, max_norm=o.cfg.rounds.max_update_norm)
        except UpdateRejected as exc:
            self.reject(offer, str(exc))
            return
        o.store.accept_update(
            o.run_id,
            r.round,
            agent_id,
            offer.blob.sha256,
            offer.num_samples,
            offer.metrics,
            blob,
        )
        r.reports += 1
        o.metrics.inc("fedge_updates_total", status="accepted")
        o.metrics.inc("fedge_update_bytes_total", len(blob))
        log.info(
            "round %d: update from %s accepted (%d/%d, %d samples)",
            r.round,
            agent_id,
            r.reports,
            r.goal or len(r.participants),
            offer.num_samples,
        )
        self.ack(offer, True)

"""Update intake: offers, chunked uploads, validation, acks. Every outcome is recorded.

An update counts only if it is for the open round of this run, from a selected device, for
the current model version, arrives before the round closes, and passes ``validate_delta``.
Outcomes from invited devices are acked with the reason and recorded in the round's counters:
``rejected`` (bad update), ``late`` (round closed), ``duplicates`` (already counted).
Messages from devices that were not invited to the round are counted in ``ignored`` (and the
``fedge_ignored_messages_total`` metric), never written to the database one row per message,
and cannot affect the round. Each device has at most one upload in flight.
Evaluation reports (federated evaluation rounds) count once per device and round; they are
acked with an empty sha256 so the device stops re-sending.

What a device's answers may cost is decided by ``device_budget.DeviceBudgets``: a decisive
refusal (rejected, aborted) of a participant is written once per device and round (the round
machine's ``answered`` set makes it once); repeatable ones (late, duplicate) are written at
most ``limits.records_per_round`` times per device and round, and never for another run;
per-message log lines are limited per device and kind, with a periodic summary.

Accepted updates are written in groups (``flush``): one SQLite transaction (one fsync, ~3 ms
on an ext4 disk) per group instead of one per update, which is what a round of thousands of
devices answering at once spends its time on otherwise. An update is acked and counted only
after its group is durable, so a crash loses no acked update; the orchestrator flushes before
every round decision (``tick``), and at the latest after ``FLUSH_UPDATES`` updates or
``FLUSH_BYTES`` bytes. The norm of each accepted delta is kept (``norms``) for the round's
robust weighting, and the decoded delta itself (``kept_deltas``, up to ``KEEP_DELTA_BYTES``
for the round) for its aggregation: the round close then reads and decodes no delta again
(1,000 devices: ~0.3 s of the close). They are a copy of what SQLite holds: a restarted
orchestrator, or a round over the limit, reads the missing ones from the database.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.protocol import timeline
from fedge.protocol.chunks import Chunk
from fedge.protocol.errors import TransferError
from fedge.protocol.fields import is_base64_text
from fedge.protocol.messages import (
    Ack,
    EvalReport,
    FetchRequest,
    RoundAbort,
    StatsReport,
    UpdateOffer,
    new_msg_id,
)
from fedge.protocol.standardization import FeatureStats, report_problem
from fedge.protocol.tensors import l2_norm
from fedge.protocol.transfer import PullTransfer

from .device_budget import DeviceBudgets
from .metrics_exporter import Metrics
from .round_machine import LiveRound, RoundMachine
from .store import Store
from .validation import UpdateRejected, validate_delta

log = logging.getLogger(__name__)

Send = Callable[[str, bytes], None]  # (agent id, payload) -> published on that agent's cmd topic
FLUSH_UPDATES = 1000  # accepted updates waiting for one transaction, at most
FLUSH_BYTES = 64 << 20  # ... and delta bytes
# decoded deltas kept in memory for the open round's aggregation, at most (10,000 devices x the
# digits MLP's 19 KB: 190 MB, so about 7,000 of them; the rest is read back from SQLite)
KEEP_DELTA_BYTES = 128 << 20  # the default of rounds.decoded_deltas_mib
STALL_CHECK_SECONDS = 0.5  # how often uploads in flight are checked for stalls
BACKLOG_STALL_CHECK_SECONDS = 30.0  # ... while our own receive queue is not empty


@dataclass(frozen=True)
class _Accepted:
    """A validated update waiting for its group's transaction (not yet acked or counted)."""

    offer: UpdateOffer
    round: int
    blob: bytes


class RecentIds:
    """The last ``size`` message ids seen (QoS 1 delivers duplicates after reconnects).

    Kept as 16-byte digests: the memory is ``size`` x about 150 bytes whatever a device
    puts in its ids (a 60 KB id costs what a 32-character one does)."""

    def __init__(self, size: int = 10000) -> None:
        self._size = size
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def first_time(self, msg_id: str) -> bool:
        key = hashlib.blake2b(msg_id.encode("utf-8", "replace"), digest_size=16).digest()
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return True


class UpdateIntake:
    def __init__(
        self,
        *,
        store: Store,
        rounds: RoundMachine,
        send: Send,
        global_params: Callable[[], dict[str, np.ndarray]],
        metrics: Metrics,
        max_update_norm: float = 0.0,
        omittable: frozenset[str] = frozenset(),  # frozen names an update may leave out
        clock: Callable[[], float] = time.monotonic,
        budgets: DeviceBudgets | None = None,
        features: int = 0,  # features per sample (the model input's): statistics reports
        inline_max_bytes: int = 0,  # deltas up to this size are taken inline from the offer
        keep_decoded_bytes: int = KEEP_DELTA_BYTES,  # rounds.decoded_deltas_mib
    ) -> None:
        self.store = store
        self._features = features
        self.rounds = rounds
        self._send = send
        self._global_params = global_params
        self.metrics = metrics
        self._max_norm = max_update_norm
        self._omittable = omittable
        self._inline_max = inline_max_bytes
        self._keep_decoded = keep_decoded_bytes
        self._clock = clock
        self._recent = RecentIds()
        self.budgets = budgets or DeviceBudgets(metrics=metrics, clock=clock)
        # one upload in flight per device: agent id -> (transfer, the offer it serves)
        self.uploads: dict[str, tuple[PullTransfer, UpdateOffer]] = {}
        self.ignored: Counter[str] = Counter()  # message kind -> count, devices not invited
        self._pending: dict[str, _Accepted] = {}  # agent id -> validated, not yet written
        self._pending_bytes = 0
        self._last_stall_check = float("-inf")
        # the open round's validated deltas: L2 norms (robust weighting at the close) and,
        # within rounds.decoded_deltas_mib, the decoded deltas themselves (its aggregation)
        self._norms_of: tuple[str, int] = ("", 0)
        self._norms: dict[str, float] = {}
        self._deltas: dict[str, dict[str, np.ndarray]] = {}
        self._deltas_bytes = 0

    # ---- lifecycle ----
    def norms(self, run_id: str, round_no: int) -> dict[str, float]:
        """agent id -> L2 norm of its accepted delta in that round, as far as this process saw
        them (a restarted orchestrator computes the others from the stored deltas)."""
        return dict(self._norms) if self._norms_of == (run_id, round_no) else {}

    def kept_deltas(self, run_id: str, round_no: int) -> dict[str, dict[str, np.ndarray]]:
        """agent id -> its decoded delta (exactly ``decode_delta`` of the stored blob) for the
        updates of that round this process validated and kept; the caller reads the others
        (accepted before a restart, or past ``rounds.decoded_deltas_mib``) from the database. Only
        the round's accepted updates may be looked up: a kept delta whose write failed is
        never accepted, so never asked for."""
        return self._deltas if self._norms_of == (run_id, round_no) else {}

    def release_deltas(self) -> None:
        """Drop the kept deltas (the round is aggregated): memory O(model) between rounds."""
        self._deltas, self._deltas_bytes = {}, 0

    def flush(self) -> None:
        """Write the waiting accepted updates in one transaction, then count and ack them."""
        if not self._pending:
            return
        batch = list(self._pending.values())
        self.store.accept_updates(
            [
                (a.offer.run_id, a.round, a.offer.agent, a.offer.blob.sha256)
                + (a.offer.num_samples, a.offer.metrics, a.blob)
                for a in batch
            ]
        )
        self._pending.clear()
        self._pending_bytes = 0
        for a in batch:
            self.rounds.on_accepted(a.offer.agent)
            timeline.mark("accepted", round=a.round, agent=a.offer.agent)
            self.metrics.inc("fedge_updates_total", status="accepted")
            self.metrics.inc("fedge_update_bytes_total", len(a.blob))
            log.debug("round %d: update from %s accepted", a.round, a.offer.agent)
            self.ack(a.offer, True)
        r = self.rounds.current
        log.info(
            "round %d: %d update%s accepted (%s/%d)",
            batch[-1].round,
            len(batch),
            "" if len(batch) == 1 else "s",
            r.reports if r is not None and r.round == batch[-1].round else "?",
            (r.goal or len(r.participants)) if r is not None else 0,
        )

    def tick(self, backlog: int = 0) -> None:
        """Write the waiting accepted updates; check the uploads in flight for stalls.

        ``backlog``: messages waiting in our own receive queue. While there are some, the
        chunks a stalled-looking upload waits for may be among them: asking the devices again
        then only doubles the traffic of an overloaded orchestrator (10,000 devices answering
        at once), so stalls are checked only when the queue is empty, or every 30 s at least.
        """
        self.flush()
        now = self._clock()
        if now - self._last_stall_check < STALL_CHECK_SECONDS:
            return  # a transfer stalls after 5 s: checking thousands of them every tick is waste
        if backlog and now - self._last_stall_check < BACKLOG_STALL_CHECK_SECONDS:
            return
        self._last_stall_check = now
        for agent_id, (transfer, _offer) in list(self.uploads.items()):
            transfer.tick()
            if transfer.failed:
                if self.budgets.should_log(agent_id, "upload"):
                    log.warning("upload from %s failed: %s", agent_id, transfer.failed)
                del self.uploads[agent_id]

    def round_closed(self) -> None:
        """Drop every upload in flight (their offers are late now)."""
        self.uploads.clear()

    def on_chunk(self, agent_id: str, chunk: Chunk) -> None:
        entry = self.uploads.get(agent_id)
        if entry is None or entry[0].ref.sha256 != chunk.sha256:
            return
        if entry[0].on_chunk(chunk):
            del self.uploads[agent_id]
            result = entry[0].result
            if result is not None:
                self._on_upload_complete(agent_id, entry[1], result)

    # ---- replies ----
    def _reply(self, agent: str, run_id: str, round_no: int, sha: str, ok: bool, why: str) -> None:
        ack = Ack(new_msg_id(), agent, run_id, round_no, sha, accepted=ok, reason=why)
        self._send(agent, ack.encode())

    def ack(self, offer: UpdateOffer, accepted: bool, reason: str = "") -> None:
        self._reply(offer.agent, offer.run_id, offer.round, offer.blob.sha256, accepted, reason)

    def _ack_eval(self, msg: EvalReport | StatsReport, accepted: bool, reason: str = "") -> None:
        self._reply(msg.agent, msg.run_id, msg.round, "", accepted, reason)

    def _may_record(self, agent_id: str, run_id: str) -> bool:
        """A repeatable refusal (late, duplicate) may cost a database write: the budget says."""
        return self.budgets.may_record(agent_id, run_id, self.rounds.run_id, self.rounds.last_round)

    def reject(self, offer: UpdateOffer, reason: str, counter: str = "rejected") -> None:
        """Refuse an offer; ``late`` ones are budgeted, a ``rejected`` one is written once
        (the device has answered the round then)."""
        if self.budgets.should_log(offer.agent, counter):
            log.warning(
                "round %d: update from %s %s: %s", offer.round, offer.agent, counter, reason
            )
        current = offer.run_id == self.rounds.run_id
        if current and (counter == "rejected" or self._may_record(offer.agent, offer.run_id)):
            self.store.reject_update(
                offer.run_id,
                offer.round,
                offer.agent,
                offer.blob.sha256,
                reason,
                offer.blob.size,
                counter=counter,
            )
        self.metrics.inc("fedge_updates_total", status=counter)
        if counter == "rejected":
            self.rounds.on_refused(offer.agent)
        self.ack(offer, False, reason)

    def _ignore(self, kind: str, agent_id: str, round_no: int) -> None:
        """A message about a round from a device that was not invited to it: a counter, no row."""
        self.ignored[kind] += 1
        r = self.rounds.current
        if r is not None and r.round == round_no:
            self.rounds.on_ignored()
        self.metrics.count_ignored(kind)
        log.debug("round %d: %s from %s ignored: device was not invited", round_no, kind, agent_id)

    def _open_round_for(self, run_id: str, round_no: int) -> LiveRound | None:
        r = self.rounds.current
        if r is None or run_id != self.rounds.run_id or round_no != r.round:
            return None
        return r

    # ---- aborts and evaluation reports ----
    def on_abort(self, agent_id: str, msg: RoundAbort) -> None:
        r = self._open_round_for(msg.run_id, msg.round)
        if r is None:
            return
        if not r.invited(agent_id):
            self._ignore("abort", agent_id, r.round)
            return
        if not self._recent.first_time(f"abort/{msg.msg_id}") or agent_id in r.answered:
            return
        self.store.reject_update(
            msg.run_id, r.round, agent_id, "", msg.reason, 0, counter="aborted"
        )
        self.rounds.on_refused(agent_id)
        self.metrics.inc("fedge_updates_total", status="aborted")
        log.info("round %d: %s will not report: %s", msg.round, agent_id, msg.reason)

    def on_eval_report(self, agent_id: str, msg: EvalReport) -> None:
        """Count a device's evaluation report once per (run, round, device)."""
        r = self._open_round_for(msg.run_id, msg.round)
        if r is None:
            if (
                self._was_invited(msg.run_id, msg.round, agent_id)
                and self._recent.first_time(f"late/{msg.msg_id}")
                and self._may_record(agent_id, msg.run_id)
            ):
                self.store.count(msg.run_id, msg.round, "late")
                if self.budgets.should_log(agent_id, "late"):
                    log.info("round %d: evaluation report from %s is late", msg.round, agent_id)
            self._ack_eval(msg, False, f"round {msg.round} is closed")
            return
        if not r.invited(agent_id):
            self._ignore("eval_report", agent_id, r.round)
            self._ack_eval(msg, False, "device not selected")
            return
        if r.kind != "evaluate":
            why = "not an evaluation round"
            if self.budgets.should_log(agent_id, "eval_report"):
                log.warning(
                    "round %d: evaluation report from %s ignored: %s", r.round, agent_id, why
                )
            self._ack_eval(msg, False, why)
            return
        if msg.model_version != r.model_version:
            self._ack_eval(msg, False, f"the round evaluates model v{r.model_version}")
            return
        if agent_id in r.answered:  # a re-send, or aborted
            self._ack_eval(msg, True, "this device already answered the round")
            return
        self._count_report(msg, r, agent_id, msg.metrics, "evaluation", "samples")

    def on_stats_report(self, agent_id: str, msg: StatsReport) -> None:
        """Count a device's feature statistics once per (run, round, device); a report that
        real rows of this model's input cannot give is refused with the reason."""
        r = self._open_round_for(msg.run_id, msg.round)
        if r is None:
            self._ack_eval(msg, False, f"round {msg.round} is closed")
            return
        if not r.invited(agent_id):
            self._ignore("stats_report", agent_id, r.round)
            self._ack_eval(msg, False, "device not selected")
            return
        if r.kind != "statistics":
            self._ack_eval(msg, False, f"round {r.round} is not a statistics round")
            return
        if agent_id in r.answered:
            self._ack_eval(msg, agent_id in r.accepted, "this device already answered the round")
            return
        stats = FeatureStats(msg.count, msg.sum, msg.sumsq)
        problem = report_problem(stats, self._features, msg.num_samples)
        if problem:
            if self.budgets.should_log(agent_id, "stats_report"):
                log.warning("round %d: statistics from %s refused: %s", r.round, agent_id, problem)
            self.store.reject_update(msg.run_id, r.round, agent_id, "", problem, 0)
            self.rounds.on_refused(agent_id)
            self.metrics.inc("fedge_updates_total", status="rejected")
            self._ack_eval(msg, False, problem)
            return
        values = {"count": msg.count, "sum": msg.sum, "sumsq": msg.sumsq}
        self._count_report(msg, r, agent_id, values, "statistics", "rows")

    def _count_report(
        self,
        msg: EvalReport | StatsReport,
        r: LiveRound,
        agent_id: str,
        values: dict[str, Any],
        what: str,
        unit: str,
    ) -> None:
        """Store an evaluation or statistics report once, count it, ack it."""
        if not self.store.add_eval_report(msg.run_id, r.round, agent_id, msg.num_samples, values):
            self._ack_eval(msg, True, "already counted")
            return
        self.rounds.on_accepted(agent_id)
        self.metrics.inc("fedge_updates_total", status="evaluated")
        log.info(
            "round %d: %s from %s counted (%d/%d, %d %s)",
            r.round,
            what,
            agent_id,
            r.reports,
            len(r.participants),
            msg.num_samples,
            unit,
        )
        self._ack_eval(msg, True)

    def _was_invited(self, run_id: str, round_no: int, agent_id: str) -> bool:
        """Whether ``agent_id`` took part in a (closed) round of this run."""
        if run_id != self.rounds.run_id:
            return False
        rec = self.store.get_round(run_id, round_no)
        return rec is not None and agent_id in rec.participants

    # ---- offers and uploads ----
    def on_offer(self, agent_id: str, offer: UpdateOffer) -> None:
        timeline.mark("offer_received", round=offer.round, agent=agent_id)
        waiting = self._pending.get(agent_id)
        if waiting is not None and (waiting.offer.run_id, waiting.round) == (
            offer.run_id,
            offer.round,
        ):
            return  # validated, written with its group soon: the ack follows then
        open_round = self._open_round_for(offer.run_id, offer.round)
        if open_round is not None and agent_id not in open_round.accepted:
            accepted_sha = None  # ``accepted`` mirrors the stored rows (rebuilt on restart)
        else:
            accepted_sha = self.store.accepted_update(offer.run_id, offer.round, agent_id)
        if accepted_sha is not None:  # counted already: a re-offer after a lost ack, or a duplicate
            if accepted_sha == offer.blob.sha256:
                if self._recent.first_time(f"dup/{offer.msg_id}") and self._may_record(
                    agent_id, offer.run_id
                ):
                    self.store.count(offer.run_id, offer.round, "duplicates")
                    self.metrics.inc("fedge_updates_total", status="duplicate")
                self.ack(offer, True, "already counted")
            else:
                self.ack(offer, False, "another update from this device was already counted")
            return
        r = self._open_round_for(offer.run_id, offer.round)
        if r is None:
            closed = f"round {offer.round} is closed"
            if not self._was_invited(offer.run_id, offer.round, agent_id):
                self._ignore("late_offer", agent_id, offer.round)  # not this device's round
                self.ack(offer, False, closed)
            elif self._recent.first_time(f"late/{offer.msg_id}"):
                self.reject(offer, closed, counter="late")
            else:
                self.ack(offer, False, closed)
            return
        if not r.invited(agent_id):
            self._ignore("offer", agent_id, r.round)
            self.ack(offer, False, "device was not selected for this round")
            return
        if r.kind != "train":
            what = "federated evaluation" if r.kind == "evaluate" else "statistics"
            self.reject(offer, f"round {r.round} is a {what} round (no training)")
            return
        if agent_id in r.answered:
            self.ack(offer, False, "this device's update for the round was already refused")
            return
        if offer.model_version != r.model_version:
            self.reject(
                offer,
                f"update is for model v{offer.model_version}, the round trains v{r.model_version}",
            )
            return
        busy = self.uploads.get(agent_id)
        if busy is not None:
            if busy[1].blob.sha256 != offer.blob.sha256:  # a second upload at once: refused
                self.ack(offer, False, "another upload from this device is in progress")
            return
        if offer.inline and offer.blob.size <= self._inline_max:
            self._take_inline(agent_id, offer)
            return
        # no inline delta, or one over our limit: fetch the blob (the inline text is ignored)
        limit = 4 * sum(int(a.nbytes) for a in self._global_params().values()) + (1 << 20)

        def request(indices: list[int], agent: str = agent_id, sha: str = offer.blob.sha256):
            req = FetchRequest(msg_id=new_msg_id(), agent=agent, sha256=sha, indices=indices)
            self._send(agent, req.encode())

        try:
            transfer = PullTransfer(offer.blob, request, max_bytes=limit, clock=self._clock)
        except TransferError as exc:
            self.reject(offer, str(exc))
            return
        self.uploads[agent_id] = (transfer, offer)
        transfer.start()

    def _take_inline(self, agent_id: str, offer: UpdateOffer) -> None:
        """A small delta carried in the offer: the same size and sha256 checks a fetched one
        passes, then the same validation."""
        try:
            # what base64.b64decode(validate=True) does, with the alphabet check that parsing
            # the offer used (a regex over ~26,000 characters cost ~0.2 ms an offer)
            if not is_base64_text(offer.inline):
                raise binascii.Error("Non-base64 digit found")
            blob = binascii.a2b_base64(offer.inline)
        except (binascii.Error, ValueError) as exc:
            self.reject(offer, f"inline delta is not valid base64: {exc}")
            return
        sha = hashlib.sha256(blob).hexdigest()
        if len(blob) != offer.blob.size or sha != offer.blob.sha256:
            self.reject(
                offer,
                f"inline delta fails its integrity check: {len(blob)} bytes with sha256 "
                f"{sha[:12]}, the offer announces {offer.blob.size} bytes with sha256 "
                f"{offer.blob.sha256[:12]}",
            )
            return
        self._on_upload_complete(agent_id, offer, blob)

    def _on_upload_complete(self, agent_id: str, offer: UpdateOffer, blob: bytes) -> None:
        timeline.mark("upload_complete", round=offer.round, agent=agent_id)
        r = self._open_round_for(offer.run_id, offer.round)
        if r is None:
            self.reject(offer, f"round {offer.round} closed during the upload", counter="late")
            return
        if agent_id in r.accepted:
            self.ack(offer, True, "already counted")
            return
        if agent_id in self._pending:
            return  # another offer of the same device is being written (acked then)
        if r.goal and r.reports + len(self._pending) >= r.goal:
            self.reject(offer, f"round {r.round} already has its {r.goal} reports", counter="late")
            return
        try:
            delta = validate_delta(
                blob,
                self._global_params(),
                max_norm=self._max_norm,
                omittable=self._omittable,
                fill_omitted=False,  # as the aggregation decodes it (zeros add nothing)
            )
        except UpdateRejected as exc:
            self.reject(offer, str(exc))
            return
        if self._norms_of != (offer.run_id, r.round):
            self._norms_of, self._norms = (offer.run_id, r.round), {}
            self.release_deltas()
        self._norms[agent_id] = l2_norm(delta)
        nbytes = sum(int(a.nbytes) for a in delta.values())
        if self._deltas_bytes + nbytes <= self._keep_decoded:
            self._deltas[agent_id] = delta
            self._deltas_bytes += nbytes
        self._pending[agent_id] = _Accepted(offer, r.round, blob)
        self._pending_bytes += len(blob)
        if len(self._pending) >= FLUSH_UPDATES or self._pending_bytes >= FLUSH_BYTES:
            self.flush()

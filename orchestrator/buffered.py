"""The orchestrator in buffered asynchronous mode (FedBuff): slots, a buffer, K-commits.

``buffered_machine.py`` decides; this module does the I/O around it, on the same transport,
store, registry, blob server, strategies and validation as synchronous rounds
(:class:`~.server.Orchestrator`, which it extends). Every decision is written to SQLite
(``buffered_store.py``) before it is announced: a slot before its grant is sent, an accepted
delta before its ack, a version with the deltas it applied in one transaction. A restart
rebuilds the machine from those rows, so each delta is counted once.

The wire: a retained ``AsyncAnnounce`` on ``round/async``; a device's ``SlotRequest`` is
answered with a ``RoundTask`` on its cmd topic (round = slot number, deadline = expiry); its
delta arrives as the usual ``UpdateOffer`` (round = slot) and is pulled in chunks.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable

import numpy as np

from fedge.protocol.async_messages import AsyncAnnounce, SlotRequest
from fedge.protocol.bundle import Bundle
from fedge.protocol.chunks import Chunk, blob_ref
from fedge.protocol.errors import TransferError
from fedge.protocol.messages import (
    Ack,
    FetchRequest,
    Message,
    RoundAbort,
    RoundEvent,
    RoundTask,
    UpdateOffer,
    new_msg_id,
)
from fedge.protocol.parameter_travel import static_names
from fedge.protocol.privacy import DEFAULT_TARGET_DELTA, dp_epsilon
from fedge.protocol.tensors import decode_tensors, encode_tensors
from fedge.protocol.transfer import PullTransfer
from fedge.protocol.transport import Transport

from .buffered_config import validate_mode
from .buffered_machine import BufferedMachine, Commit, Expire, Finish, Grant, Slot
from .buffered_store import BufferedStore
from .config import OrchestratorConfig
from .intake import RecentIds
from .robust_aggregation import aggregate_stored, weigh_stored
from .server import Orchestrator
from .validation import UpdateRejected, validate_delta

log = logging.getLogger(__name__)

ANNOUNCE_EVERY = 1.0  # re-announce free slots at most this often (commits announce at once)
KEEP_PARAMS = 3  # recent versions' parameters kept for devices still downloading them


class BufferedOrchestrator(Orchestrator):
    """``mode = "async"``: no rounds that wait; a version every ``buffer_size`` deltas."""

    def __init__(
        self,
        config: OrchestratorConfig,
        *,
        transport: Transport,
        bundle: Bundle | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        validate_mode(config.mode)
        config.buffered.validate()  # before the bundle and the database are opened
        if clock is None:
            super().__init__(config, transport=transport, bundle=bundle)
        else:
            super().__init__(config, transport=transport, bundle=bundle, clock=clock)
        self.machine = BufferedMachine(config.buffered, versions=config.rounds.rounds)
        self.bstore = BufferedStore(self.store)
        self.async_uploads: dict[str, tuple[PullTransfer, UpdateOffer, Slot]] = {}
        self._recent_ids = RecentIds()
        self._params_kept: deque[str] = deque(maxlen=KEEP_PARAMS)
        self._last_announce = float("-inf")
        self._announced: tuple[int, int, str] | None = None

    # ---- lifecycle ----
    def _resume_or_create_run(self) -> None:
        super()._resume_or_create_run()
        run = self.run_id
        self.machine.resume(
            run,
            version=self.rounds.version,
            slots=self.bstore.active_slots(run),
            buffered=self.bstore.buffered(run),
            last_slot=self.bstore.last_slot(run),
        )
        self.async_uploads.clear()
        log.info(
            "async run %s at v%d: %d deltas buffered, %d slots active (K=%d, C=%d)",
            run,
            self.machine.version,
            len(self.machine.state.buffered),
            self.machine.training,
            self.cfg.buffered.buffer_size,
            self.cfg.buffered.max_concurrency,
        )
        # no synchronous round in this run: clear a retained task an earlier run left
        self.transport.publish(self.topics.round_current, b"", retain=True)
        self._announce(force=True)

    def _publish_task(self, state: str) -> None:
        """Synchronous round tasks are not used in async mode (announcements replace them)."""

    def _load_global(self, run_id: str) -> int:
        version, self.global_bytes, _sha = self.store.latest_version(run_id)
        self.global_params = decode_tensors(self.global_bytes)
        self._params_kept.append(self.blobs.offer(self.global_bytes).sha256)
        self.blobs.keep_only({self.bundle_ref.sha256, *self._params_kept})
        self.metrics.set("fedge_model_version", version)
        return version

    def _announce(self, *, force: bool = False) -> None:
        m = self.machine
        state = "finished" if m.finished else "open"
        key = (m.version, m.slots_free, state)
        now = self.clock()
        last = self._announced
        # At once when the run's state changes; a new version or "any slot free?" at most every
        # ANNOUNCE_EVERY. The announcement is retained on one topic every device reads: with
        # 1,000 devices and C = 200 the free/full flip (and a version every ~0.2 s) sent 1,000
        # copies several times a second, each answered by a burst of slot requests that mostly
        # found the slots taken again. Grants carry the version; devices need the
        # announcement only to know when asking is worth it.
        changed = last is None or last[2] != key[2]
        if not (force or changed) and (key == last or now - self._last_announce < ANNOUNCE_EVERY):
            return
        msg = AsyncAnnounce(
            run_id=self.run_id,
            model_version=m.version,
            state=state,
            bundle_hash=self.bundle.content_hash,
            slots_free=m.slots_free,
            training=m.training,
            retry_after=self.cfg.buffered.retry_after,
        )
        self.transport.publish(self.topics.round_async, msg.encode(), retain=True)
        self._announced, self._last_announce = key, now

    # ---- the clock ----
    def _uploading(self, agent_id: str) -> bool:
        return agent_id in self.async_uploads

    def tick(self) -> None:
        self._last_tick = self.clock()
        self.registry.flush()
        queue_drops = int(getattr(self.transport, "dropped", 0))  # MqttLink's full queue
        self.budgets.queue_full(queue_drops - self._queue_drops)
        self._queue_drops = queue_drops
        self.budgets.tick()
        self.registry.flush()  # status flips held back (registry.FLIP_SECONDS)
        for agent_id, (transfer, _offer, _slot) in list(self.async_uploads.items()):
            transfer.tick()
            if transfer.failed:
                log.warning("upload from %s failed: %s", agent_id, transfer.failed)
                del self.async_uploads[agent_id]
        for _ in range(100):
            decision = self.machine.tick(self.clock(), self._gone)
            if decision is None:
                break
            if isinstance(decision, Expire):
                self.bstore.expire_slots(self.run_id, [s.slot for s in decision.slots])
                log.info("%d slots expired: %s", len(decision.slots), _agents(decision.slots))
            elif isinstance(decision, Commit):
                self._commit_buffer(decision)
            elif isinstance(decision, Finish):
                self._finish_async()
                return
        self._announce()

    def _commit_buffer(self, commit: Commit) -> None:
        rows = self.bstore.buffered_deltas(self.run_id, commit.buffered)
        # the robust defaults of synchronous rounds (capped claims, adaptive clipping), keyed by
        # slot: one device may have several deltas in the buffer
        plan = weigh_stored(
            self.robust,
            ((str(slot), agent, n, blob) for slot, agent, n, _w, blob in rows),
            self.registry.registered_samples,
            f"async v{commit.version}",
        )
        new_params = aggregate_stored(
            self.strategy,
            self.global_params,
            plan,
            ((str(slot), blob, staleness) for slot, _a, _n, staleness, blob in rows),
        )
        if new_params is None:  # the strategy kept the model: the version repeats it
            new_params = self.global_params
        metrics: dict[str, float] = {
            "updates": float(len(rows)),
            "mean_weight": float(np.mean([r[3] for r in rows])) if rows else 0.0,
            "num_samples": float(sum(r[2] for r in rows)),
        }
        metrics.update(plan.metrics())
        rs = self.cfg.rounds
        if rs.clip_norm > 0 and rs.noise_multiplier > 0:
            # Privacy accounting per buffer. Each upload is one Gaussian release of its
            # device's data, so a device's budget composes over its uploads. Unlike a
            # synchronous round, a buffer may hold several deltas of one fast device, so the
            # version count is no bound: the most slots any device was handed is (a slot
            # carries at most one upload, refused or expired ones included: they were seen).
            releases = self.bstore.most_slots_per_device(self.run_id)
            metrics["dp_releases"] = float(releases)
            metrics["dp_epsilon"] = dp_epsilon(rs.noise_multiplier, releases)
            metrics["dp_delta"] = DEFAULT_TARGET_DELTA
        if self.evaluator is not None:
            metrics.update(self.evaluator.evaluate(new_params))
        blob = encode_tensors(new_params)
        state = self.strategy.state_dict()
        self.bstore.commit(
            self.run_id,
            commit.version,
            commit.buffered,
            blob,
            hashlib.sha256(blob).hexdigest(),
            metrics,
            encode_tensors(state) if state else None,
            keep_deltas=self.cfg.rounds.keep_deltas,
        )
        self.machine.on_committed(commit)
        self.rounds.on_committed(self._load_global(self.run_id))
        self.metrics.inc("fedge_rounds_total", state="committed")
        log.info(
            "async v%d committed from %d deltas: %s",
            commit.version,
            len(rows),
            ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())),
        )
        ev = RoundEvent(
            run_id=self.run_id,
            kind="version_committed",
            round=0,
            model_version=commit.version,
            reports=len(rows),
            participants=self.machine.training,
            metrics=metrics,
            ts=self.clock(),
        )
        self.transport.publish(self.topics.orchestrator_events, ev.encode())
        self.transport.publish(self.topics.orchestrator_status, ev.encode(), retain=True)
        self._announce()

    def _finish_async(self) -> None:
        self.store.finish_run(self.run_id)
        self._announce(force=True)
        self._event("run_finished", None)
        log.info("async run %s finished: %d model versions", self.run_id, self.machine.version)
        if self.cfg.exit_when_done:
            self._stop.set()
        else:
            self._resume_or_create_run()

    # ---- incoming ----
    def _on_agent_message(self, agent_id: str, msg: Message) -> None:
        if isinstance(msg, SlotRequest):
            self._on_slot_request(agent_id, msg)
        elif isinstance(msg, UpdateOffer):
            self._on_offer(agent_id, msg)
        elif isinstance(msg, RoundAbort):
            self._on_abort(agent_id, msg)
        else:
            super()._on_agent_message(agent_id, msg)

    def _on_slot_request(self, agent_id: str, msg: SlotRequest) -> None:
        if msg.run_id != self.run_id or not self._recent_ids.first_time(f"slot/{msg.msg_id}"):
            return
        rs = self.cfg.rounds
        status = self.registry.devices.get(agent_id)
        if status is None or self.registry.why_not_eligible(
            status, rs.target_agents, rs.target_backends
        ):
            log.debug("slot request from %s ignored: not an eligible device", agent_id)
            return
        decision = self.machine.request(agent_id, self.clock())
        if (
            isinstance(decision, Grant)
            and not decision.new
            and decision.slot.version != self.machine.version
        ):
            # it holds a slot for an older version (a restarted device): a fresh one instead
            self.machine.on_refused(decision.slot.slot)
            self.bstore.expire_slots(self.run_id, [decision.slot.slot])
            decision = self.machine.request(agent_id, self.clock())
        if not isinstance(decision, Grant):
            log.debug("no slot for %s: %s", agent_id, decision.reason)
            return
        s = decision.slot
        if decision.new:
            self.bstore.grant_slot(self.run_id, s)
            log.info(
                "slot %d -> %s (v%d, %d training)",
                s.slot,
                agent_id,
                s.version,
                self.machine.training,
            )
        params = blob_ref(self.global_bytes)
        # small parameters go with the grant, unasked, as in synchronous rounds
        # (server._push_params): the device trains one round trip sooner. With C >> K slots
        # turn over every few seconds, and that round trip was part of every slot's latency.
        pushed = 0 < params.size <= rs.inline_max_bytes
        task = RoundTask(
            run_id=self.run_id,
            round=s.slot,
            model_version=s.version,
            state="open",
            bundle_hash=self.bundle.content_hash,
            bundle=self.bundle_ref,
            params=params,
            participants=[agent_id],
            deadline=s.expires,
            config=self.train_config(),
            retry_after=self.cfg.buffered.retry_after,
            params_pushed=pushed,
            inline_max_bytes=rs.inline_max_bytes,
        )
        self.transport.publish(self.topics.agent_cmd(agent_id), task.encode())
        if pushed:
            sent_before = self.blobs.bytes_sent
            push = FetchRequest(new_msg_id(), agent_id, params.sha256, list(range(params.chunks)))
            self.blobs.serve(push, self.topics.agent_down(agent_id))
            self.metrics.count_bytes("down", self.blobs.bytes_sent - sent_before)

    def _ack(self, offer: UpdateOffer, ok: bool, why: str = "") -> None:
        ack = Ack(new_msg_id(), offer.agent, offer.run_id, offer.round, offer.blob.sha256, ok, why)
        self.transport.publish(self.topics.agent_cmd(offer.agent), ack.encode())

    def _refuse(self, offer: UpdateOffer, reason: str) -> None:
        log.warning("slot %d: delta from %s refused: %s", offer.round, offer.agent, reason)
        self.bstore.refuse(self.run_id, offer.round, reason)
        self.machine.on_refused(offer.round)
        self.metrics.inc("fedge_updates_total", status="rejected")
        self._ack(offer, False, reason)

    def _on_offer(self, agent_id: str, offer: UpdateOffer) -> None:
        if offer.run_id != self.run_id:
            self._ack(offer, False, f"run {offer.run_id} is not the active run")
            return
        slot = self.bstore.slot(self.run_id, offer.round)
        verdict = self.machine.judge(slot, agent_id, offer.model_version)
        if verdict.status == "duplicate":
            if self._recent_ids.first_time(f"dup/{offer.msg_id}"):
                self.bstore.count(self.run_id, "duplicates")
            self._ack(offer, True, "already counted")
            return
        if verdict.status == "refused":
            if slot is None or slot.agent_id != agent_id:  # not this device's slot: no row
                self.metrics.inc("fedge_ignored_messages_total", kind="offer")
                self._ack(offer, False, verdict.reason)
            elif slot.state == "refused":
                self._ack(offer, False, verdict.reason)
            else:
                self._refuse(offer, verdict.reason)
            return
        busy = self.async_uploads.get(agent_id)
        if busy is not None:
            if busy[1].blob.sha256 != offer.blob.sha256:
                self._ack(offer, False, "another upload from this device is in progress")
            return
        if slot is None:  # pragma: no cover - judge refused it
            return
        limit = 4 * sum(int(a.nbytes) for a in self.global_params.values()) + (1 << 20)

        def request(indices: list[int], agent: str = agent_id, sha: str = offer.blob.sha256):
            req = FetchRequest(msg_id=new_msg_id(), agent=agent, sha256=sha, indices=indices)
            self.transport.publish(self.topics.agent_cmd(agent), req.encode())

        try:
            transfer = PullTransfer(offer.blob, request, max_bytes=limit, clock=self.clock)
        except TransferError as exc:
            self._refuse(offer, str(exc))
            return
        self.async_uploads[agent_id] = (transfer, offer, slot)
        transfer.start()

    def _on_chunk(self, agent_id: str, chunk: Chunk) -> None:
        entry = self.async_uploads.get(agent_id)
        if entry is None or entry[0].ref.sha256 != chunk.sha256:
            return
        if entry[0].on_chunk(chunk):
            del self.async_uploads[agent_id]
            if entry[0].result is not None:
                self._on_upload_complete(entry[1], entry[2], entry[0].result)

    def _on_upload_complete(self, offer: UpdateOffer, slot: Slot, blob: bytes) -> None:
        current = self.bstore.slot(self.run_id, slot.slot)  # judged again: time has passed
        verdict = self.machine.judge(current, offer.agent, offer.model_version)
        if verdict.status == "duplicate":
            self._ack(offer, True, "already counted")
            return
        if verdict.status == "refused" or current is None:
            self._refuse(offer, verdict.reason)
            return
        try:
            validate_delta(
                blob,
                self.global_params,
                max_norm=self.cfg.rounds.max_update_norm,
                omittable=static_names(self.bundle.manifest),  # frozen entries need not travel
            )
        except UpdateRejected as exc:
            self._refuse(offer, str(exc))
            return
        stored = self.bstore.accept(
            self.run_id,
            current,
            sha256=offer.blob.sha256,
            staleness=verdict.staleness,
            weight=verdict.weight,
            num_samples=offer.num_samples,
            metrics=offer.metrics,
            delta=blob,
        )
        if stored:
            self.machine.on_accepted(slot.slot)
            self.metrics.inc("fedge_updates_total", status="accepted")
            log.info(
                "slot %d: delta from %s accepted (v%d, staleness %d, weight %.3f; %d/%d buffered)",
                slot.slot,
                offer.agent,
                slot.version,
                verdict.staleness,
                verdict.weight,
                len(self.machine.state.buffered),
                self.cfg.buffered.buffer_size,
            )
        self._ack(offer, True, "" if stored else "already counted")

    def _on_abort(self, agent_id: str, msg: RoundAbort) -> None:
        slot = self.bstore.slot(self.run_id, msg.round) if msg.run_id == self.run_id else None
        if slot is None or slot.agent_id != agent_id or slot.state != "active":
            return
        self.bstore.refuse(self.run_id, slot.slot, msg.reason, counter="aborted")
        self.machine.on_refused(slot.slot)
        log.info("slot %d: %s will not report: %s", slot.slot, agent_id, msg.reason)


def _agents(slots: tuple[Slot, ...]) -> str:
    names = [s.agent_id for s in slots]
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def create_orchestrator(
    config: OrchestratorConfig, *, transport: Transport, bundle: Bundle | None = None
) -> Orchestrator:
    """The orchestrator for ``config.mode``: synchronous rounds or buffered asynchronous."""
    if validate_mode(config.mode) == "async":
        return BufferedOrchestrator(config, transport=transport, bundle=bundle)
    return Orchestrator(config, transport=transport, bundle=bundle)

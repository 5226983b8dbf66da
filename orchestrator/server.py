"""The orchestrator's main loop: registry, rounds, update intake, aggregation, persistence.

One thread owns all state; paho's network thread only queues messages. Every decision is
recorded in SQLite before it is announced, so a restart resumes the same run and round.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

from fedge.protocol.bundle import Bundle, load_bundle, pack_bundle
from fedge.protocol.chunks import blob_ref, chunk_bytes, decode_frame, encode_frame
from fedge.protocol.errors import CodecError, MessageError, TransferError
from fedge.protocol.messages import (
    Ack,
    FetchRequest,
    Message,
    RoundAbort,
    RoundEvent,
    RoundTask,
    Status,
    TrainConfig,
    UpdateOffer,
    new_msg_id,
    parse_message,
)
from fedge.protocol.mqtt_link import MqttLink
from fedge.protocol.tensors import decode_tensors, encode_tensors
from fedge.protocol.topics import Topics
from fedge.protocol.transfer import PullTransfer

from .config import OrchestratorConfig
from .evaluation import CentralEvaluator
from .store import RoundRecord, Store
from .strategies import DeviceInfo, create_strategy
from .validation import UpdateRejected, validate_delta

log = logging.getLogger(__name__)


class Orchestrator:
    def __init__(self, config: OrchestratorConfig, *, bundle: Bundle | None = None) -> None:
        self.cfg = config
        self.topics = Topics(config.federation)
        keys = [Path(p).read_bytes() for p in config.trusted_keys]
        self.bundle = bundle or load_bundle(
            config.bundle, trusted_public_keys=keys or None, require_signature=bool(keys)
        )
        self.archive = pack_bundle(self.bundle.root)
        self.bundle_ref = blob_ref(self.archive)
        self.store = Store(config.database)
        self.strategy = create_strategy(config.strategy)
        self.evaluator = (
            CentralEvaluator(self.bundle, config.evaluation.data)
            if config.evaluation.enabled
            else None
        )
        self.link = MqttLink(config.mqtt, client_id=config.client_id)
        self._blobs: dict[str, bytes] = {self.bundle_ref.sha256: self.archive}
        self._uploads: dict[tuple[str, str], tuple[PullTransfer, UpdateOffer]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()  # recent msg ids (QoS 1 duplicates)
        self.online: dict[str, Status] = {}
        self._stop = threading.Event()
        self.run_id = ""
        self.current: RoundRecord | None = None
        self._global: dict | None = None
        self._global_bytes = b""
        self._version = 0
        self._last_wait_log = 0.0

    def stop(self) -> None:
        self._stop.set()

    # ---- run lifecycle ----
    def _resume_or_create_run(self) -> None:
        active = self.store.active_run()
        if active and active["bundle_hash"] == self.bundle.content_hash:
            self.run_id = active["run_id"]
            log.info("resuming run %s", self.run_id)
        else:
            if active:
                log.warning(
                    "run %s used another bundle; it stays unfinished, starting a new run",
                    active["run_id"],
                )
            params = encode_tensors(self.bundle.initial_parameters())
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            self.run_id = f"{stamp}-{self.bundle.content_hash[:8]}"
            self.store.create_run(
                self.run_id,
                self.bundle.content_hash,
                asdict(self.cfg.rounds),
                params,
                hashlib.sha256(params).hexdigest(),
            )
            log.info("new run %s for model %s", self.run_id, self.bundle.manifest.get("model_name"))
            if self.evaluator is not None:  # the baseline every later version is compared with
                baseline = self.evaluator.evaluate(self.bundle.initial_parameters())
                self.store.set_version_metrics(self.run_id, 0, baseline)
        self._load_global()
        rounds = self.store.rounds(self.run_id)
        if rounds and rounds[-1].state == "open":
            self.current = rounds[-1]
            log.info(
                "round %d was open at restart; continuing it (%d reports kept)",
                self.current.round,
                self.current.reports,
            )
            self._publish_task("open")

    def _load_global(self) -> None:
        self._version, self._global_bytes, _sha = self.store.latest_version(self.run_id)
        self._global = decode_tensors(self._global_bytes)
        self._blobs = {
            self.bundle_ref.sha256: self.archive,
            blob_ref(self._global_bytes).sha256: self._global_bytes,
        }

    def run(self) -> None:
        for topic in (self.topics.all_agent_status, self.topics.all_agent_up):
            self.link.subscribe(topic)
        self.link.start()
        if not self.link.wait_connected(30):
            log.warning("broker %s not reachable yet; still trying", self.cfg.mqtt.url)
        self._resume_or_create_run()
        try:
            while not self._stop.is_set():
                item = self.link.get(timeout=0.2)
                if item is not None:
                    self._dispatch(*item)
                    continue
                for key, (transfer, _offer) in list(self._uploads.items()):
                    transfer.tick()
                    if transfer.failed:
                        log.warning("upload from %s failed: %s", key[0], transfer.failed)
                        del self._uploads[key]
                self._step()
        finally:
            self.link.stop()
            self.store.close()

    # ---- rounds ----
    def _eligible_devices(self) -> list[DeviceInfo]:
        return [
            DeviceInfo(s.agent, s.num_samples, s.backend)
            for s in self.online.values()
            if s.state not in ("offline", "ineligible") and s.eligible
        ]

    def _step(self) -> None:
        if self.current is None:
            if self._version >= self.cfg.rounds.rounds:
                self._finish()
                return
            devices = self._eligible_devices()
            if len(devices) < self.cfg.rounds.min_devices:
                if time.monotonic() - self._last_wait_log > 10:
                    log.info(
                        "waiting for devices: %d of %d online",
                        len(devices),
                        self.cfg.rounds.min_devices,
                    )
                    self._last_wait_log = time.monotonic()
                return
            self._open_round(devices)
            return
        r = self.current
        answered = r.reports + r.aborted + r.rejected
        if answered >= len(r.participants) or time.time() >= r.deadline:
            self._close_round()

    def _open_round(self, devices: list[DeviceInfo]) -> None:
        previous = self.store.rounds(self.run_id)
        round_no = previous[-1].round + 1 if previous else 1
        rs = self.cfg.rounds
        participants = self.strategy.configure_round(
            round_no, devices, per_round=rs.devices_per_round, seed=rs.seed
        )
        now = time.time()
        self.current = RoundRecord(
            self.run_id,
            round_no,
            self._version,
            "open",
            participants,
            now,
            now + rs.deadline_seconds,
            0,
            0,
            0,
            0,
            0,
            0,
            {},
        )
        self.store.open_round(self.current)
        self._publish_task("open")
        self._event("round_started", self.current)
        log.info(
            "round %d open: model v%d, %d participants, deadline in %.0f s",
            round_no,
            self._version,
            len(participants),
            rs.deadline_seconds,
        )

    def _publish_task(self, state: str) -> None:
        r = self.current
        rs = self.cfg.rounds
        task = RoundTask(
            run_id=self.run_id,
            round=r.round if r else 0,
            model_version=self._version,
            state=state,
            bundle_hash=self.bundle.content_hash,
            bundle=self.bundle_ref,
            params=blob_ref(self._global_bytes),
            participants=r.participants if r else [],
            deadline=r.deadline if r else 0.0,
            config=TrainConfig(
                local_epochs=rs.local_epochs, batch_size=rs.batch_size, seed=rs.seed
            ),
        )
        self.link.publish(self.topics.round_current, task.encode(), retain=True)

    def _close_round(self) -> None:
        r = self.store.get_round(self.run_id, self.current.round)
        self.current = None
        self._uploads.clear()
        if r.reports < max(1, self.cfg.rounds.min_reports):
            note = f"{r.reports} reports < min_reports {self.cfg.rounds.min_reports}"
            self.store.close_round(self.run_id, r.round, "abandoned", note)
            log.warning("round %d abandoned: %s", r.round, note)
            self._event("round_abandoned", r)
            self._publish_task("closed")
            return
        aggregator = self.strategy.start_aggregation(self._global)
        for _agent, num_samples, delta in self.store.accepted_deltas(self.run_id, r.round):
            aggregator.add(decode_tensors(delta), num_samples)
        new_params = aggregator.result()
        metrics = self._round_metrics(r.round)
        if new_params is None:
            self.store.close_round(self.run_id, r.round, "abandoned", "strategy kept the model")
            self._publish_task("closed")
            return
        if self.evaluator is not None:
            metrics.update(self.evaluator.evaluate(new_params))
        blob = encode_tensors(new_params)
        self.store.commit_round(
            self.run_id,
            r.round,
            self._version + 1,
            blob,
            hashlib.sha256(blob).hexdigest(),
            metrics,
            keep_deltas=self.cfg.rounds.keep_deltas,
        )
        self._load_global()
        r = self.store.get_round(self.run_id, r.round)
        log.info(
            "round %d committed -> model v%d (%d reports): %s",
            r.round,
            self._version,
            r.reports,
            ", ".join(
                f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if not k.endswith("samples")
            ),
        )
        self._event("round_committed", r)
        self._publish_task("closed")

    def _round_metrics(self, round_no: int) -> dict[str, float]:
        """Sample-weighted means of the metrics the devices reported."""
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        for n, metrics in self.store.update_metrics(self.run_id, round_no):
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * n
                weights[k] = weights.get(k, 0.0) + n
        return {k: sums[k] / weights[k] for k in sums}

    def _finish(self) -> None:
        self.store.finish_run(self.run_id)
        self._publish_task("finished")
        self._event("run_finished", None)
        log.info("run %s finished: %d model versions", self.run_id, self._version)
        if self.cfg.exit_when_done:
            self._stop.set()
        else:
            self.run_id = ""
            self._resume_or_create_run()

    def _event(self, kind: str, r: RoundRecord | None) -> None:
        ev = RoundEvent(
            run_id=self.run_id,
            kind=kind,
            round=r.round if r else 0,
            model_version=self._version,
            reports=r.reports if r else 0,
            participants=len(r.participants) if r else 0,
            metrics={k: float(v) for k, v in (r.metrics if r else {}).items()},
            ts=time.time(),
        )
        data = ev.encode()
        self.link.publish(self.topics.orchestrator_events, data)
        self.link.publish(self.topics.orchestrator_status, data, retain=True)

    # ---- incoming ----
    def _first_time(self, msg_id: str) -> bool:
        if msg_id in self._seen:
            return False
        self._seen[msg_id] = None
        if len(self._seen) > 10000:
            self._seen.popitem(last=False)
        return True

    def _dispatch(self, topic: str, payload: bytes) -> None:
        try:
            agent_id, kind = self.topics.parse_agent_topic(topic)
            if kind == "status":
                if payload:
                    self._on_status(agent_id, parse_message(payload, Status))
            elif kind == "up/msg":
                msg = parse_message(payload)
                if getattr(msg, "agent", None) != agent_id:
                    raise MessageError(
                        f"message claims agent {getattr(msg, 'agent', None)!r} on {agent_id}'s topic"
                    )
                self._on_agent_message(agent_id, msg)
            elif kind == "up/chunk":
                chunk = decode_frame(payload)
                entry = self._uploads.get((agent_id, chunk.sha256))
                if entry and entry[0].on_chunk(chunk):
                    del self._uploads[(agent_id, chunk.sha256)]
                    self._on_upload_complete(agent_id, entry[1], entry[0].result)
            else:
                raise MessageError(f"unexpected topic kind {kind!r}")
        except (MessageError, TransferError, CodecError) as exc:
            log.warning("ignored a bad message on %s: %s", topic, exc)

    def _on_status(self, agent_id: str, status: Status) -> None:
        if status.agent != agent_id:
            raise MessageError(f"status for {status.agent!r} published on {agent_id}'s topic")
        previous = self.online.get(agent_id)
        self.online[agent_id] = status
        if previous is None or previous.state != status.state:
            log.info(
                "device %s is %s (backend %s, %d samples)",
                agent_id,
                status.state,
                status.backend or "?",
                status.num_samples,
            )
        self.store.upsert_device(
            agent_id,
            status.state,
            status.backend,
            status.num_samples,
            status.eligible,
            status.reason,
            status.version,
        )

    def _on_agent_message(self, agent_id: str, msg: Message) -> None:
        if isinstance(msg, FetchRequest):
            blob = self._blobs.get(msg.sha256)
            if blob is None:
                log.info("%s asked for unknown object %s", agent_id, msg.sha256[:12])
                return
            ref = blob_ref(blob)
            for i in msg.indices:
                if 0 <= i < ref.chunks:
                    self.link.publish(
                        self.topics.agent_down(agent_id), encode_frame(ref, i, chunk_bytes(blob, i))
                    )
        elif isinstance(msg, UpdateOffer):
            self._on_offer(agent_id, msg)
        elif isinstance(msg, RoundAbort):
            if (
                self._first_time(msg.msg_id)
                and self.current
                and msg.run_id == self.run_id
                and msg.round == self.current.round
            ):
                self.store.count(self.run_id, msg.round, "aborted")
                self.current.aborted += 1
                log.info("round %d: %s will not report: %s", msg.round, agent_id, msg.reason)
        else:
            raise MessageError(f"unexpected {msg.TYPE!r} message from an agent")

    def _ack(self, offer: UpdateOffer, accepted: bool, reason: str = "") -> None:
        ack = Ack(
            msg_id=new_msg_id(),
            agent=offer.agent,
            run_id=offer.run_id,
            round=offer.round,
            sha256=offer.blob.sha256,
            accepted=accepted,
            reason=reason,
        )
        self.link.publish(self.topics.agent_cmd(offer.agent), ack.encode())

    def _on_offer(self, agent_id: str, offer: UpdateOffer) -> None:
        accepted_sha = self.store.accepted_update(offer.run_id, offer.round, agent_id)
        if accepted_sha is not None:  # counted already: a re-offer after a lost ack, or a duplicate
            if accepted_sha == offer.blob.sha256:
                if self._first_time(offer.msg_id) and self.store.get_round(
                    offer.run_id, offer.round
                ):
                    self.store.count(offer.run_id, offer.round, "duplicates")
                self._ack(offer, True, "already counted")
            else:
                self._ack(
                    offer,
                    False,
                    "another update from this device was already counted for this round",
                )
            return
        r = self.current
        if r is None or offer.run_id != self.run_id or offer.round != r.round:
            if self._first_time(offer.msg_id):
                self.store.reject_update(
                    offer.run_id,
                    offer.round,
                    agent_id,
                    offer.blob.sha256,
                    "round is closed",
                    offer.blob.size,
                    counter="late",
                )
            self._ack(offer, False, f"round {offer.round} is closed")
            return
        if agent_id not in r.participants:
            self._ack(offer, False, "device was not selected for this round")
            return
        if offer.model_version != self._version:
            self._ack(
                offer,
                False,
                f"update is for model v{offer.model_version}, current is v{self._version}",
            )
            return
        key = (agent_id, offer.blob.sha256)
        if key in self._uploads:
            return
        limit = 4 * len(self._global_bytes) + (1 << 20)

        def request(
            indices: list[int], agent: str = agent_id, sha: str = offer.blob.sha256
        ) -> None:
            req = FetchRequest(msg_id=new_msg_id(), agent=agent, sha256=sha, indices=indices)
            self.link.publish(self.topics.agent_cmd(agent), req.encode())

        try:
            transfer = PullTransfer(offer.blob, request, max_bytes=limit)
        except TransferError as exc:
            self._reject(agent_id, offer, str(exc))
            return
        self._uploads[key] = (transfer, offer)
        transfer.start()

    def _reject(self, agent_id: str, offer: UpdateOffer, reason: str) -> None:
        log.warning("round %d: update from %s rejected: %s", offer.round, agent_id, reason)
        self.store.reject_update(
            offer.run_id, offer.round, agent_id, offer.blob.sha256, reason, offer.blob.size
        )
        if self.current and self.current.round == offer.round:
            self.current.rejected += 1
        self._ack(offer, False, reason)

    def _on_upload_complete(self, agent_id: str, offer: UpdateOffer, blob: bytes) -> None:
        r = self.current
        if r is None or offer.round != r.round or offer.run_id != self.run_id:
            self._ack(offer, False, f"round {offer.round} closed during the upload")
            return
        try:
            validate_delta(blob, self._global, max_norm=self.cfg.rounds.max_update_norm)
        except UpdateRejected as exc:
            self._reject(agent_id, offer, str(exc))
            return
        self.store.accept_update(
            self.run_id,
            r.round,
            agent_id,
            offer.blob.sha256,
            offer.num_samples,
            offer.metrics,
            blob,
        )
        r.reports += 1
        log.info(
            "round %d: update from %s accepted (%d/%d, %d samples)",
            r.round,
            agent_id,
            r.reports,
            len(r.participants),
            offer.num_samples,
        )
        self._ack(offer, True)

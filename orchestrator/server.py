"""The orchestrator's main loop: rounds, aggregation, persistence, events.

One thread owns all state; paho's network thread only queues messages. Every decision is
recorded in SQLite before it is announced, so a restart resumes the same run and round.
Devices live in ``registry.py``, update intake in ``intake.py``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, replace
from pathlib import Path

from fedge.protocol.bundle import Bundle, load_bundle, pack_bundle
from fedge.protocol.chunks import blob_ref, chunk_bytes, decode_frame, encode_frame
from fedge.protocol.compression import decode_delta
from fedge.protocol.errors import CodecError, MessageError, TransferError
from fedge.protocol.messages import (
    EvalReport,
    FetchRequest,
    Message,
    RoundAbort,
    RoundEvent,
    RoundTask,
    Status,
    TrainConfig,
    UpdateOffer,
    parse_message,
)
from fedge.protocol.mqtt_link import MqttLink
from fedge.protocol.privacy import DEFAULT_TARGET_DELTA, dp_epsilon
from fedge.protocol.tensors import decode_tensors, encode_tensors
from fedge.protocol.topics import Topics

from .config import OrchestratorConfig
from .evaluation import CentralEvaluator
from .intake import UpdateIntake
from .metrics_exporter import Metrics, MetricsServer
from .registry import DeviceRegistry
from .round_metrics import federated_metrics, training_metrics
from .selection import over_selected
from .store import RoundRecord, Store
from .strategies import create_strategy

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
        self.strategy = create_strategy(config.strategy, config.strategy_options)
        self.evaluator = (
            CentralEvaluator(self.bundle, config.evaluation.data)
            if config.evaluation.enabled
            else None
        )
        self.link = MqttLink(config.mqtt, client_id=config.client_id)
        self.registry = DeviceRegistry(self.store)
        self.intake = UpdateIntake(self)
        self.metrics = Metrics(config.database, config.rounds)  # store-derived + events
        self.metrics_server: MetricsServer | None = None
        self._blobs: dict[str, bytes] = {self.bundle_ref.sha256: self.archive}
        # bytes of chunk frames this round: bundle + parameters down, deltas up
        self.wire_bytes = {"bytes_down": 0, "bytes_up": 0}
        self._seen: OrderedDict[str, None] = OrderedDict()  # recent msg ids (QoS 1 duplicates)
        self._stop = threading.Event()
        self.run_id = ""
        self.current: RoundRecord | None = None
        self.global_params: dict | None = None
        self.global_bytes = b""
        self._version = 0
        self._last_wait_log = 0.0
        self._next_round_at = 0.0

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
            config = {"rounds": asdict(self.cfg.rounds), "strategy": self.strategy.describe()}
            self.store.create_run(
                self.run_id,
                self.bundle.content_hash,
                config,
                params,
                hashlib.sha256(params).hexdigest(),
            )
            self.strategy = create_strategy(self.cfg.strategy, self.cfg.strategy_options)
            log.info(
                "new run %s for model %s with %s",
                self.run_id,
                self.bundle.manifest.get("model_name"),
                self.strategy.describe(),
            )
            if self.evaluator is not None:  # the baseline every later version is compared with
                baseline = self.evaluator.evaluate(self.bundle.initial_parameters())
                self.store.set_version_metrics(self.run_id, 0, baseline)
        self._load_global()
        state = self.store.strategy_state(self.run_id, self._version)
        if state is not None:
            self.strategy.load_state_dict(decode_tensors(state))
        rounds = self.store.rounds(self.run_id)
        if rounds and rounds[-1].state == "open":
            self.current = rounds[-1]
            log.info(
                "round %d was open at restart; continuing it (%d reports kept)",
                self.current.round,
                self.current.reports,
            )
            self._publish_task("open")
        else:
            self._publish_task("closed")

    def _load_global(self) -> None:
        self._version, self.global_bytes, _sha = self.store.latest_version(self.run_id)
        self.global_params = decode_tensors(self.global_bytes)
        self._blobs = {
            self.bundle_ref.sha256: self.archive,
            blob_ref(self.global_bytes).sha256: self.global_bytes,
        }
        self.metrics.set("fedge_model_version", self._version)

    def run(self) -> None:
        if self.cfg.metrics.port:
            self.metrics_server = MetricsServer(
                self.metrics, self.cfg.metrics.host, self.cfg.metrics.port
            ).start()
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
                    if not self.link.messages.empty():
                        continue  # drain a burst first; then decide without idling 0.2 s
                self.intake.tick()
                closing = self.current
                self._step()
                if closing is not None and self.current is None:
                    self._step()  # open the next round now, not after the next idle poll
        finally:
            self.link.stop()
            self.store.close()
            if self.metrics_server is not None:
                self.metrics_server.stop()

    # ---- rounds ----
    def _step(self) -> None:
        if self.current is None:
            kind = "evaluate" if self._evaluation_due() else "train"
            if kind == "train" and self._version >= self.cfg.rounds.rounds:
                self._finish()
                return
            if time.time() < self._next_round_at:
                return
            rs = self.cfg.rounds
            devices = self.registry.eligible(rs.target_agents, rs.target_backends)
            if len(devices) < max(1, rs.min_devices):
                if time.monotonic() - self._last_wait_log > 10:
                    log.info("waiting for devices: %d of %d eligible", len(devices), rs.min_devices)
                    self._last_wait_log = time.monotonic()
                return
            self._open_round(devices, kind)
            return
        r = self.current
        done = self.store.answered_agents(self.run_id, r.round)
        grace = self.cfg.rounds.offline_grace_seconds
        gone = {p for p in r.participants if p not in done and self.registry.is_offline(p, grace)}
        r.dropped = len(gone)
        goal = r.goal or len(r.participants)
        if (
            r.reports >= goal
            or len(done | gone) >= len(r.participants)
            or time.time() >= r.deadline
        ):
            self._close_round()

    def _evaluation_due(self) -> bool:
        """After every ``evaluate_every`` committed versions, one federated evaluation round of
        that version (one attempt: an evaluation that gets no report is not retried)."""
        every = self.cfg.rounds.evaluate_every
        if every <= 0 or self._version == 0 or self._version % every:
            return False
        return not any(
            r.kind == "evaluate" and r.model_version == self._version
            for r in self.store.rounds(self.run_id)
        )

    def _open_round(self, devices, kind: str = "train") -> None:
        previous = self.store.rounds(self.run_id)
        round_no = previous[-1].round + 1 if previous else 1
        rs = self.cfg.rounds
        goal = min(rs.devices_per_round or len(devices), len(devices))
        invited = over_selected(goal, rs.over_selection, len(devices))
        participants = self.strategy.configure_round(
            round_no, devices, per_round=invited, seed=rs.seed, weighted=rs.weighted_selection
        )
        if kind == "evaluate":  # every invited device's metrics count: no goal short of all
            goal = len(participants)
        now = time.time()
        self.wire_bytes = {"bytes_down": 0, "bytes_up": 0}
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
            goal=goal,
            kind=kind,
        )
        self.store.open_round(self.current)
        self.metrics.set("fedge_current_round", round_no)
        self._publish_task("open")
        self._event("round_started", self.current)
        log.info(
            "round %d open (%s): model v%d, %d invited for a goal of %d, deadline in %.0f s",
            round_no,
            "federated evaluation" if kind == "evaluate" else "training",
            self._version,
            len(participants),
            goal,
            rs.deadline_seconds,
        )

    def train_config(self) -> TrainConfig:
        rs = self.cfg.rounds
        base = TrainConfig(
            local_epochs=rs.local_epochs,
            batch_size=rs.batch_size,
            max_samples=rs.max_samples,
            seed=rs.seed,
            learning_rate=rs.learning_rate,
            compression=rs.compression,
            topk_fraction=rs.topk_fraction,
            clip_norm=rs.clip_norm,
            noise_multiplier=rs.noise_multiplier,
        )
        return self.strategy.configure_train(base)

    def _publish_task(self, state: str) -> None:
        r = self.current if state == "open" else None
        rs = self.cfg.rounds
        if state == "open" and r is not None:
            retry_after = max(1.0, r.deadline - time.time())
        elif state == "finished":
            retry_after = rs.check_back_seconds
        else:
            retry_after = max(1.0, self._next_round_at - time.time())
        task = RoundTask(
            run_id=self.run_id,
            round=r.round if r else (self.current.round if self.current else 0),
            model_version=self._version,
            state=state,
            bundle_hash=self.bundle.content_hash,
            bundle=self.bundle_ref,
            params=blob_ref(self.global_bytes),
            participants=r.participants if r else [],
            deadline=r.deadline if r else 0.0,
            config=replace(self.train_config(), evaluate_only=bool(r and r.kind == "evaluate")),
            retry_after=round(retry_after, 1),
        )
        self.link.publish(self.topics.round_current, task.encode(), retain=True)

    def _close_round(self) -> None:
        r = self.store.get_round(self.run_id, self.current.round)
        dropped = self.current.dropped
        if dropped:
            self.store.count(self.run_id, r.round, "dropped", dropped)
        self.current = None
        self.intake.uploads.clear()
        self.metrics.set("fedge_current_round", 0)
        self.metrics.set("fedge_round_duration_seconds", time.time() - r.opened)
        if r.kind == "evaluate":
            self._close_evaluation(r)
            return
        if r.reports < max(1, self.cfg.rounds.min_reports):
            note = f"{r.reports} reports < min_reports {self.cfg.rounds.min_reports}"
            self._abandon(r, note)
            return
        t_aggregate = time.monotonic()
        aggregator = self.strategy.start_aggregation(self.global_params)
        for _agent, num_samples, delta in self.store.accepted_deltas(self.run_id, r.round):
            aggregator.add(decode_delta(delta), num_samples)
        new_params = aggregator.result()
        self.metrics.observe_aggregation(time.monotonic() - t_aggregate)
        if new_params is None:
            self._abandon(r, "strategy kept the model")
            return
        t_commit = time.monotonic()
        metrics = self._round_metrics(r.round)
        metrics.update(self.wire_bytes)  # chunk bytes since the round opened (or the restart)
        rs = self.cfg.rounds
        if (
            rs.clip_norm > 0 and rs.noise_multiplier > 0
        ):  # privacy budget spent so far (conservative)
            metrics["dp_epsilon"] = dp_epsilon(rs.noise_multiplier, r.round)
            metrics["dp_delta"] = DEFAULT_TARGET_DELTA
        if self.evaluator is not None:
            metrics.update(self.evaluator.evaluate(new_params))
        blob = encode_tensors(new_params)
        state = self.strategy.state_dict()
        self.store.commit_round(
            self.run_id,
            r.round,
            self._version + 1,
            blob,
            hashlib.sha256(blob).hexdigest(),
            metrics,
            keep_deltas=self.cfg.rounds.keep_deltas,
            strategy_state=encode_tensors(state) if state else None,
        )
        self._load_global()
        self.metrics.observe_commit(time.monotonic() - t_commit)
        r = self.store.get_round(self.run_id, r.round)
        self.metrics.inc("fedge_rounds_total", state="committed")
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

    def _abandon(self, r: RoundRecord, note: str) -> None:
        self.store.close_round(self.run_id, r.round, "abandoned", note)
        self.metrics.inc("fedge_rounds_total", state="abandoned")
        self._next_round_at = time.time() + self.cfg.rounds.retry_seconds
        log.warning(
            "round %d abandoned: %s; retrying in %.0f s",
            r.round,
            note,
            self.cfg.rounds.retry_seconds,
        )
        self._event("round_abandoned", self.store.get_round(self.run_id, r.round))
        self._publish_task("closed")

    def _round_metrics(self, round_no: int) -> dict[str, float]:
        return training_metrics(self.store.update_metrics(self.run_id, round_no))

    def _close_evaluation(self, r: RoundRecord) -> None:
        """Federated evaluation: store the reports' sample-weighted means; the model stays."""
        if r.reports == 0:
            self._abandon(r, "no evaluation reports")
            return
        metrics = federated_metrics(self.store.eval_reports(self.run_id, r.round))
        self.store.close_evaluation(self.run_id, r.round, metrics)
        r = self.store.get_round(self.run_id, r.round)
        self.metrics.inc("fedge_rounds_total", state="evaluated")
        log.info(
            "round %d evaluated model v%d on %d devices: %s",
            r.round,
            r.model_version,
            r.reports,
            ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())),
        )
        self._event("round_evaluated", r)
        self._publish_task("closed")

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
    def first_time(self, msg_id: str) -> bool:
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
                    status = parse_message(payload, Status)
                    assert isinstance(status, Status)
                    self.registry.on_status(agent_id, status)
                    for state, n in self.registry.counts().items():
                        self.metrics.set("fedge_devices", n, state=state)
            elif kind == "up/msg":
                msg = parse_message(payload)
                if getattr(msg, "agent", None) != agent_id:
                    raise MessageError(
                        f"message claims agent {getattr(msg, 'agent', None)!r} on {agent_id}'s topic"
                    )
                self._on_agent_message(agent_id, msg)
            elif kind == "up/chunk":
                self.wire_bytes["bytes_up"] += len(payload)
                self.metrics.count_bytes("up", len(payload))
                self.intake.on_chunk(agent_id, decode_frame(payload))
            else:
                raise MessageError(f"unexpected topic kind {kind!r}")
        except (MessageError, TransferError, CodecError) as exc:
            log.warning("ignored a bad message on %s: %s", topic, exc)

    def _on_agent_message(self, agent_id: str, msg: Message) -> None:
        if isinstance(msg, FetchRequest):
            blob = self._blobs.get(msg.sha256)
            if blob is None:
                log.info("%s asked for unknown object %s", agent_id, msg.sha256[:12])
                return
            ref = blob_ref(blob)
            for i in msg.indices:
                if 0 <= i < ref.chunks:
                    frame = encode_frame(ref, i, chunk_bytes(blob, i))
                    self.wire_bytes["bytes_down"] += len(frame)
                    self.metrics.count_bytes("down", len(frame))
                    self.link.publish(self.topics.agent_down(agent_id), frame)
        elif isinstance(msg, UpdateOffer):
            self.intake.on_offer(agent_id, msg)
        elif isinstance(msg, RoundAbort):
            self.intake.on_abort(agent_id, msg)
        elif isinstance(msg, EvalReport):
            self.intake.on_eval_report(agent_id, msg)
        else:
            raise MessageError(f"unexpected {msg.TYPE!r} message from an agent")

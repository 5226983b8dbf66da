"""The orchestrator: carries out the round machine's decisions over a transport and a store.

``round_machine.py`` decides (open, close, abandon, finish); this module does the I/O around
those decisions: SQLite writes, MQTT publishes, aggregation and central evaluation. Every
decision is recorded in SQLite before it is announced, so a restart resumes the same run and
round. Devices live in ``registry.py``, update intake in ``intake.py``.

The transport and the clock are passed in. ``run()`` loops over ``poll()`` with the real
transport; a unit test calls ``start()``, ``handle(topic, payload)`` and ``tick()`` itself on
an in-memory transport with a fake clock (no threads, no sleeps).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from functools import partial

from fedge.protocol import timeline
from fedge.protocol.blob_server import BlobServer
from fedge.protocol.bundle import Bundle, load_bundle, pack_bundle
from fedge.protocol.chunks import Chunk, blob_ref, decode_frame
from fedge.protocol.compression import decode_delta
from fedge.protocol.errors import CodecError, MessageError, TransferError
from fedge.protocol.messages import (
    EvalReport,
    FetchRequest,
    Message,
    RoundAbort,
    RoundTask,
    Standardization,
    StatsReport,
    Status,
    TrainConfig,
    UpdateOffer,
    parse_message,
)
from fedge.protocol.parameter_travel import static_names
from fedge.protocol.privacy import DEFAULT_TARGET_DELTA, dp_epsilon
from fedge.protocol.signing import load_trusted_keys
from fedge.protocol.tensors import decode_tensors, encode_tensors, l2_norm
from fedge.protocol.topics import Topics
from fedge.protocol.transport import Transport

from .announcements import invitations, round_event, round_task, train_config
from .config import OrchestratorConfig
from .device_budget import DeviceBudgets
from .evaluation import CentralEvaluator
from .evaluation_closings import EvaluationClosings
from .intake import UpdateIntake
from .metrics_exporter import Metrics, MetricsServer
from .optimizer_check import check_optimizer
from .parameter_push import push_params
from .registry import DeviceRegistry
from .robust_aggregation import Params, aggregate_decoded, robust_weighting, weigh_norms
from .round_machine import CloseRound, Finish, LiveRound, OpenRound, RoundMachine, Wait
from .round_metrics import training_metrics
from .run_choice import new_run_id, reopen_finished_run
from .standardization_round import check_standardizable
from .store import RoundRecord, Store
from .strategies import DeviceInfo, create_strategy

log = logging.getLogger(__name__)

TICK_SECONDS = 0.2  # decide at least this often, even while messages keep arriving
BAD_TOPIC = "(bad topic)"  # the budget entry of messages whose topic names no valid device


class Orchestrator(EvaluationClosings):
    def __init__(
        self,
        config: OrchestratorConfig,
        *,
        transport: Transport,
        bundle: Bundle | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = config
        self.topics = Topics(config.federation)
        self.transport = transport
        self.clock = clock
        keys = load_trusted_keys(config.trusted_keys)
        self.bundle = bundle or load_bundle(
            config.bundle, trusted_public_keys=keys or None, require_signature=bool(keys)
        )
        check_optimizer(config.rounds, self.bundle.manifest)
        self.archive = pack_bundle(self.bundle.root)
        self.store = Store(config.database)
        self.strategy = create_strategy(config.strategy, config.strategy_options)
        self.robust = robust_weighting(self.cfg.robust)
        self.evaluator = (
            CentralEvaluator(self.bundle, config.evaluation.data)
            if config.evaluation.enabled
            else None
        )
        self.metrics = Metrics(config.database, config.rounds)  # store-derived + events
        self.metrics_server: MetricsServer | None = None
        self.budgets = DeviceBudgets(
            config.limits,
            known=lambda agent_id: agent_id in self.registry.devices,
            metrics=self.metrics,
            clock=clock,
        )
        self.registry = DeviceRegistry(
            self.store, clock=clock, may_log=self.budgets.should_log, batch_writes=True
        )
        self.rounds = RoundMachine(config.rounds, self._select)
        self.blobs = BlobServer(lambda topic, frame: self.transport.publish(topic, frame))
        self.bundle_ref = self.blobs.offer(self.archive)
        self.intake = UpdateIntake(
            store=self.store,
            rounds=self.rounds,
            send=lambda agent, data: self.transport.publish(self.topics.agent_cmd(agent), data),
            global_params=lambda: self.global_params,
            metrics=self.metrics,
            max_update_norm=config.rounds.max_update_norm,
            omittable=static_names(self.bundle.manifest),
            clock=clock,
            budgets=self.budgets,
            features=check_standardizable(config, self.bundle.manifest),
            inline_max_bytes=config.rounds.inline_max_bytes,
            keep_decoded_bytes=config.rounds.decoded_deltas_mib << 20,
        )
        self.standardization: Standardization | None = None  # the run's, once combined
        self.bytes_up = 0  # chunk frame bytes received this round (bytes down: self.blobs)
        self._stop = threading.Event()
        self.global_params: dict = {}
        self.global_bytes = b""
        self._to_evaluate: list[
            tuple[int, int, dict]
        ] = []  # (version, round, params)  # committed versions awaiting evaluation
        self._last_wait_log = float("-inf")
        self._last_tick = float("-inf")
        self._queue_drops = 0
        self._closed_unannounced = False  # a round committed and no next one opened yet
        # (run, round) of committed rounds whose deltas are not freed yet
        self._deltas_to_drop: list[tuple[str, int]] = []
        # a retained round/params frame may be out (from before a restart): cleared when unused
        self._params_shared = True

    @property
    def run_id(self) -> str:
        return self.rounds.run_id

    @property
    def current(self) -> LiveRound | None:
        return self.rounds.current

    def stop(self) -> None:
        self._stop.set()

    def _select(self, round_no: int, devices: list[DeviceInfo], invited: int) -> list[str]:
        rs = self.cfg.rounds
        return self.strategy.configure_round(
            round_no, devices, per_round=invited, seed=rs.seed, weighted=rs.weighted_selection
        )

    # ---- driving it ----
    def start(self) -> None:
        """Subscribe, connect, and resume the active run (or create one)."""
        for topic in (self.topics.all_agent_status, self.topics.all_agent_up):
            self.transport.subscribe(topic)
        self.transport.start()
        # The wildcard subscription replays every retained status on Mosquitto, none on
        # RabbitMQ 3.x: ask for the devices this database knows by their exact topics too
        # (a duplicate on Mosquitto; the registry ignores a status it already has).
        known = [self.topics.agent_status(d["agent_id"]) for d in self.store.devices()]
        self.transport.fetch_retained(known)
        if not self.transport.wait_connected(30):
            log.warning("broker %s not reachable yet; still trying", self.cfg.mqtt.url)
        self._resume_or_create_run()

    def poll(self, timeout: float) -> None:
        """Handle one received message (waiting up to ``timeout``); decide once idle."""
        item = self.transport.get(timeout=timeout)
        if item is not None:
            was_retained = getattr(self.transport, "last_was_retained", None)
            self.handle(*item, retained=bool(was_retained and was_retained()))
            if self.transport.pending() and self.clock() - self._last_tick < TICK_SECONDS:
                return  # drain a burst first, but a flood must not starve the deadline
        self.tick()

    def run(self) -> None:
        if self.cfg.metrics.port:
            self.metrics_server = MetricsServer(
                self.metrics, self.cfg.metrics.host, self.cfg.metrics.port
            ).start()
        try:
            self.start()
            while not self._stop.is_set():
                self.poll(0.2)
        finally:
            self.transport.stop()
            self.registry.flush(everything=True)
            self.store.close()
            if self.metrics_server is not None:
                self.metrics_server.stop()

    def tick(self) -> None:
        """Time-based work: stalled uploads, the round machine's decisions, then the central
        evaluation of the versions just committed (after the next round has opened)."""
        self._last_tick = self.clock()
        self.registry.flush()
        self.intake.tick(backlog=self.transport.pending())
        queue_drops = int(getattr(self.transport, "dropped", 0))  # MqttLink's full queue
        self.budgets.queue_full(queue_drops - self._queue_drops)
        self._queue_drops = queue_drops
        self.budgets.tick()
        self._decide()
        if self._closed_unannounced:  # no round opened right after the commit
            self._publish_task("closed")
        self._evaluate_pending()
        if not self.transport.pending():
            self._drop_old_deltas()

    def _decide(self) -> None:
        for _ in range(3):  # a closed round may be followed at once by the next one
            decision = self.rounds.tick(
                self.clock(),
                eligible=self._eligible,
                offline=self._gone,
                offline_ids=lambda: list(self.registry.offline_since),
            )
            if decision is None:
                return
            if isinstance(decision, Wait):
                self._log_wait(decision)
                return
            if isinstance(decision, Finish):
                self._finish()
                return
            if isinstance(decision, OpenRound):
                self._open_round(decision.round)
                return
            self._close_round(decision)
            if self._stop.is_set():
                return

    def _eligible(self) -> list[DeviceInfo]:
        rs = self.cfg.rounds
        return self.registry.eligible(rs.target_agents, rs.target_backends)

    def _gone(self, agent_id: str) -> bool:
        return self.registry.is_offline(agent_id, self.cfg.rounds.offline_grace_seconds)

    def _log_wait(self, wait: Wait) -> None:
        if self.clock() - self._last_wait_log > 10:
            log.info("waiting for devices: %d of %d eligible", wait.eligible, wait.needed)
            self._last_wait_log = self.clock()

    # ---- run lifecycle ----
    def _resume_or_create_run(self) -> None:
        if self.cfg.continue_run:
            self.cfg.continue_run = False  # once per process: a run finished again is followed
            reopen_finished_run(self.store, self.bundle.content_hash, self.cfg.rounds.rounds)
        active = self.store.active_run()
        if active and active["bundle_hash"] == self.bundle.content_hash:
            run_id = active["run_id"]
            log.info("resuming run %s", run_id)
        else:
            if active:
                log.warning(
                    "run %s used another bundle; it stays unfinished, starting a new run",
                    active["run_id"],
                )
            params = encode_tensors(self.bundle.initial_parameters())
            run_id = new_run_id(self.store, self.bundle.content_hash, self.clock())
            config = {"rounds": asdict(self.cfg.rounds), "strategy": self.strategy.describe()}
            config |= {"mode": self.cfg.mode, "buffered": asdict(self.cfg.buffered)}
            self.store.create_run(
                run_id, self.bundle.content_hash, config, params, hashlib.sha256(params).hexdigest()
            )
            self.strategy = create_strategy(self.cfg.strategy, self.cfg.strategy_options)
            self.robust = robust_weighting(self.cfg.robust)
            log.info(
                "new run %s for model %s with %s",
                run_id,
                self.bundle.model_name,
                self.strategy.describe(),
            )
            if self.evaluator is not None:  # the baseline every later version is compared with
                baseline = self.evaluator.evaluate(self.bundle.initial_parameters())
                self.store.set_version_metrics(run_id, 0, baseline)
        self._load_standardization(run_id)
        version = self._load_global(run_id)
        state = self.store.strategy_state(run_id, version)
        if state is not None:
            self.strategy.load_state_dict(decode_tensors(state))
        rounds = self.store.rounds(run_id)
        if not self.cfg.rounds.keep_deltas:  # a crash came between a commit and the freeing
            for r in self.store.rounds_with_deltas(run_id):
                if (run_id, r) not in self._deltas_to_drop:
                    self._deltas_to_drop.append((run_id, r))
        live = None
        if rounds and rounds[-1].state == "open":
            live = LiveRound.resumed(rounds[-1], self.store.updates(run_id, rounds[-1].round))
        self.rounds.resume(
            run_id,
            version=version,
            last_round=rounds[-1].round if rounds else 0,
            evaluated_versions={r.model_version for r in rounds if r.kind == "evaluate"},
            current=live,
            statistics_ready=self.standardization is not None,
        )
        if live is not None:
            log.info(
                "round %d was open at restart; continuing it (%d reports kept)",
                live.round,
                live.reports,
            )
            # the broker keeps them retained, unless it lost them too (no persistence)
            self._invite(live, skip=live.answered)
            self._publish_task("open")
        else:
            self._publish_task("closed")

    def _load_standardization(self, run_id: str) -> None:
        stored = self.store.standardization(run_id)
        self.standardization = Standardization(*stored) if stored else None
        if self.evaluator is not None:
            self.evaluator.standardize(stored)

    def _load_global(self, run_id: str) -> int:
        version, self.global_bytes, _sha = self.store.latest_version(run_id)
        self.global_params = decode_tensors(self.global_bytes)
        params_ref = self.blobs.offer(self.global_bytes)
        self.blobs.keep_only({self.bundle_ref.sha256, params_ref.sha256})
        self.metrics.set("fedge_model_version", version)
        return version

    # ---- rounds ----
    def _open_round(self, live: LiveRound) -> None:
        rec = live.record()
        self.store.open_round(rec)
        self.bytes_up = 0
        self.blobs.bytes_sent = 0
        self.metrics.set("fedge_current_round", live.round)
        self._invite(live)
        self._publish_task("open")
        self._event("round_started", rec)
        log.info(
            "round %d open (%s): model v%d, %d invited for a goal of %d, deadline in %.0f s",
            live.round,
            {"evaluate": "federated evaluation", "statistics": "feature statistics"}.get(
                live.kind, "training"
            ),
            live.model_version,
            len(live.participants),
            live.goal,
            live.deadline - live.opened,
        )

    def _invite(self, live: LiveRound, skip: set[str] | None = None) -> None:
        """One retained invitation per participant, each on that device's own topic (before the
        task, so an invited device usually holds its invitation when the task arrives)."""
        for agent, payload in invitations(live, skip):
            self.transport.publish(self.topics.agent_invite(agent), payload, retain=True)

    def train_config(self) -> TrainConfig:
        return train_config(self.cfg.rounds, self.strategy)

    def _publish_task(self, state: str) -> None:
        self._closed_unannounced = False
        task = self._task(state)
        self.transport.publish(self.topics.round_current, task.encode(), retain=True)
        timeline.mark(f"task_{state}", round=task.round)
        if task.params_pushed:
            self._push_params(task)

    def _push_params(self, task: RoundTask) -> None:
        """The parameters right behind the task, unasked (orchestrator/parameter_push.py)."""
        live = self.rounds.current
        if live is None:
            return
        sent_before = self.blobs.bytes_sent
        self._params_shared = push_params(
            task.params,
            self.global_bytes,
            live.participants,
            transport=self.transport,
            topics=self.topics,
            blobs=self.blobs,
            shared_from=self.cfg.rounds.shared_params_from,
            shared_before=self._params_shared,
        )
        self.metrics.count_bytes("down", self.blobs.bytes_sent - sent_before)
        timeline.mark("params_pushed", round=task.round)

    def _task(self, state: str) -> RoundTask:
        return round_task(
            state=state,
            live=self.rounds.current if state == "open" else None,
            run_id=self.run_id,
            version=self.rounds.version,
            bundle_hash=self.bundle.content_hash,
            bundle=self.bundle_ref,
            params=blob_ref(self.global_bytes),
            config=self.train_config(),
            rounds=self.cfg.rounds,
            now=self.clock(),
            next_round_at=self.rounds.next_round_at,
            standardize=self.standardization,
        )

    def _close_round(self, close: CloseRound) -> None:
        live = close.round
        if close.dropped:
            self.store.count(self.run_id, live.round, "dropped", close.dropped)
        self.intake.round_closed()
        self.budgets.tick(now_or_never=True)  # what the round's devices were refused
        self.metrics.set("fedge_current_round", 0)
        self.metrics.set("fedge_round_duration_seconds", self.clock() - live.opened)
        if live.ignored:
            log.warning(
                "round %d: ignored %d messages from devices that were not invited",
                live.round,
                live.ignored,
            )
        log.debug("round %d closes (%s, %d dropped)", live.round, close.why, close.dropped)
        if close.abandon:
            self._abandon(live.round, close.abandon)
        elif live.kind == "evaluate":
            self._close_evaluation(live.round)
        elif live.kind == "statistics":
            self._close_statistics(live.round)
        else:
            self._commit(live)

    def _commit(self, live: LiveRound) -> None:
        timeline.mark("closing", round=live.round)
        t_aggregate = time.monotonic()

        plan = weigh_norms(
            self.robust,
            self._stored_norms(live.round),
            self.registry.registered_samples,
            f"round {live.round}",
        )
        new_params = aggregate_decoded(
            self.strategy, self.global_params, plan, self._round_deltas(live.round)
        )
        self.intake.release_deltas()
        self.metrics.observe_aggregation(time.monotonic() - t_aggregate)
        timeline.mark("aggregated", round=live.round)
        if new_params is None:
            self._abandon(live.round, "strategy kept the model")
            return
        t_commit = time.monotonic()
        metrics = self._round_metrics(live.round)
        metrics.update(plan.metrics())
        # chunk bytes since the round opened (or the restart)
        metrics.update({"bytes_down": self.blobs.bytes_sent, "bytes_up": self.bytes_up})
        rs = self.cfg.rounds
        if rs.clip_norm > 0 and rs.noise_multiplier > 0:  # privacy budget so far (conservative)
            metrics["dp_epsilon"] = dp_epsilon(rs.noise_multiplier, live.round)
            metrics["dp_delta"] = DEFAULT_TARGET_DELTA
        blob = encode_tensors(new_params)
        state = self.strategy.state_dict()
        self._drop_old_deltas()  # never idle since the last commit: free those first
        self.store.commit_round(
            self.run_id,
            live.round,
            self.rounds.version + 1,
            blob,
            hashlib.sha256(blob).hexdigest(),
            metrics,
            keep_deltas=True,  # freed once idle, after the next round opened (Store.drop_deltas)
            strategy_state=encode_tensors(state) if state else None,
        )
        if not rs.keep_deltas:
            self._deltas_to_drop.append((self.run_id, live.round))
        timeline.mark("committed", round=live.round)
        self.rounds.on_committed(self._load_global(self.run_id))
        self.metrics.observe_commit(time.monotonic() - t_commit)
        r = self._stored_round(live.round)
        self.metrics.inc("fedge_rounds_total", state="committed")
        log.info(
            "round %d committed -> model v%d (%d reports): %s",
            r.round,
            self.rounds.version,
            r.reports,
            ", ".join(
                f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if not k.endswith("samples")
            ),
        )
        self._event("round_committed", r)
        # announced at the end of this turn unless the next round's task replaces it at once
        # (one retained fan-out to every device saved per round)
        self._closed_unannounced = True
        if self.evaluator is not None:  # after the next round opens (tick), not before
            self._to_evaluate.append((self.rounds.version, live.round, new_params))

    def _drop_old_deltas(self) -> None:
        """Free the deltas of the rounds committed since (``Store.drop_deltas``): called when
        the receive queue is empty, and before the next commit at the latest."""
        while self._deltas_to_drop:
            self.store.drop_deltas(*self._deltas_to_drop[0])
            self._deltas_to_drop.pop(0)

    def _evaluate_pending(self) -> None:
        """Central evaluation of the versions committed since the last call, off the round's
        critical path: the devices already train the next round meanwhile. The metrics land on
        the version (and its round) they measure, and go out as a ``version_evaluated`` event."""
        while self._to_evaluate:
            version, round_no, params = self._to_evaluate.pop(0)
            metrics = self.evaluator.evaluate(params) if self.evaluator is not None else {}
            self.store.add_version_metrics(self.run_id, version, metrics)
            timeline.mark("evaluation_stored", version=version)
            log.info(
                "model v%d evaluated: %s",
                version,
                ", ".join(
                    f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k != "test_samples"
                ),
            )
            r = self._stored_round(round_no)
            ev = round_event("version_evaluated", self.run_id, version, r, self.clock())
            self.transport.publish(self.topics.orchestrator_events, ev.encode())

    def _round_deltas(self, round_no: int) -> Iterator[tuple[str, Callable[[], Params], float]]:
        """The round's accepted deltas in the order they were accepted (the sums are the same
        to the bit as reading them back): the ones intake kept decoded, the others read from
        the database one at a time, when the aggregation asks (O(model) for those)."""
        kept = self.intake.kept_deltas(self.run_id, round_no)
        for agent, _claimed in self.store.accepted_claims(self.run_id, round_no):
            delta = kept.get(agent)
            if delta is not None:
                yield agent, partial(_given, delta), 1.0
            else:
                yield agent, partial(self._stored_delta, round_no, agent), 1.0

    def _stored_delta(self, round_no: int, agent: str) -> Params:
        return decode_delta(self.store.accepted_delta(self.run_id, round_no, agent) or b"")

    def _stored_norms(self, round_no: int) -> Iterator[tuple[str, str, int, float]]:
        """(agent, agent, claimed samples, delta norm) of the round's accepted updates: norms
        kept at intake, or read from the stored delta (accepted before a restart)."""
        kept = self.intake.norms(self.run_id, round_no)
        for agent, claimed in self.store.accepted_claims(self.run_id, round_no):
            norm = kept.get(agent)
            if norm is None:
                blob = self.store.accepted_delta(self.run_id, round_no, agent) or b""
                norm = l2_norm(decode_delta(blob))
            yield agent, agent, claimed, norm

    def _round_metrics(self, round_no: int) -> dict[str, float]:
        return training_metrics(self.store.update_metrics(self.run_id, round_no))

    def _stored_round(self, round_no: int) -> RoundRecord:
        rec = self.store.get_round(self.run_id, round_no)
        if rec is None:
            raise RuntimeError(f"round {round_no} of run {self.run_id} vanished from the database")
        return rec

    def _abandon(self, round_no: int, note: str) -> None:
        self.store.close_round(self.run_id, round_no, "abandoned", note)
        self.metrics.inc("fedge_rounds_total", state="abandoned")
        self.rounds.on_abandoned(self.clock())
        log.warning(
            "round %d abandoned: %s; retrying in %.0f s",
            round_no,
            note,
            self.cfg.rounds.retry_seconds,
        )
        self._event("round_abandoned", self._stored_round(round_no))
        self._publish_task("closed")

    def _finish(self) -> None:
        self._evaluate_pending()  # the last version's metrics before the run ends
        self.store.finish_run(self.run_id)
        self._publish_task("finished")
        self._event("run_finished", None)
        log.info("run %s finished: %d model versions", self.run_id, self.rounds.version)
        if self.cfg.exit_when_done:
            self._stop.set()
        else:
            self._resume_or_create_run()

    def _event(self, kind: str, r: RoundRecord | None) -> None:
        ev = round_event(kind, self.run_id, self.rounds.version, r, self.clock())
        data = ev.encode()
        self.transport.publish(self.topics.orchestrator_events, data)
        self.transport.publish(self.topics.orchestrator_status, data, retain=True)

    # ---- incoming ----
    def handle(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        """One received message; bad input is ignored (logged within the device's budget),
        never raised. ``retained``: the broker delivered it from its retained store."""
        try:
            agent_id, kind = self.topics.parse_agent_topic(topic)
        except MessageError as exc:
            self.budgets.drop(BAD_TOPIC, "bad_topic")
            if self.budgets.should_log(BAD_TOPIC, "bad_topic"):
                log.warning("ignored a message on %s: %s", topic[:200], exc)
            return
        verdict = self.budgets.screen(
            topic,
            agent_id,
            kind,
            payload,
            retained=retained,
            uploading=self._uploading(agent_id),
        )
        if verdict == "clear":  # retained on an up topic: the broker would replay it forever
            self.transport.publish(topic, b"", retain=True)
        if verdict != "admit":
            return
        try:
            if kind == "status":
                if payload:
                    status = parse_message(payload, Status)
                    if not isinstance(status, Status):
                        raise MessageError(f"expected a status on {topic}")
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
                self.bytes_up += len(payload)
                self.metrics.count_bytes("up", len(payload))
                self._on_chunk(agent_id, decode_frame(payload))
            else:
                raise MessageError(f"unexpected topic kind {kind!r}")
        except (MessageError, TransferError, CodecError) as exc:
            if self.budgets.should_log(agent_id, "bad_message"):
                log.warning("ignored a bad message on %s: %s", topic, exc)

    _dispatch = handle  # the name the fuzz tests use

    def _uploading(self, agent_id: str) -> bool:  # async mode overrides it
        return agent_id in self.intake.uploads

    def _on_chunk(self, agent_id: str, chunk: Chunk) -> None:  # async mode overrides it
        self.intake.on_chunk(agent_id, chunk)

    def _on_agent_message(self, agent_id: str, msg: Message) -> None:
        if isinstance(msg, FetchRequest):
            if self.blobs.holds(msg.sha256):
                wanted = list(dict.fromkeys(msg.indices))  # served once each anyway
                allowed = self.budgets.frames_to_serve(agent_id, len(wanted))
                if allowed:  # the rest: when the device's pull asks again
                    sent_before = self.blobs.bytes_sent
                    request = replace(msg, indices=wanted[:allowed])
                    self.blobs.serve(request, self.topics.agent_down(agent_id))
                    timeline.mark("params_served", agent=agent_id)
                    self.metrics.count_bytes("down", self.blobs.bytes_sent - sent_before)
            elif self.budgets.should_log(agent_id, "fetch"):
                log.info("%s asked for unknown object %s", agent_id, msg.sha256[:12])
        elif isinstance(msg, UpdateOffer):
            self.bytes_up += len(msg.inline)  # a small delta came inline (no chunks)
            self.intake.on_offer(agent_id, msg)
        elif isinstance(msg, RoundAbort):
            self.intake.on_abort(agent_id, msg)
        elif isinstance(msg, EvalReport):
            self.intake.on_eval_report(agent_id, msg)
        elif isinstance(msg, StatsReport):
            self.intake.on_stats_report(agent_id, msg)
        else:
            raise MessageError(f"unexpected {msg.TYPE!r} message from an agent")


def _given(delta: Params) -> Params:
    """A kept delta, handed to the aggregation like one read on demand."""
    return delta

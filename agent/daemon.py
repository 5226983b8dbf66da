"""The agent's I/O edge: messages in, the round machine's steps out.

The transport, the clock and the training backend are passed in. ``handle(topic, payload)``
takes one received message, ``tick()`` does the periodic work (re-requests, re-offers, the
round's next step); ``run()`` loops over both for a real transport, and a unit test calls them
directly on an in-memory one. What to do is decided in agent/round_machine.py; the local work
itself is in agent/round_runner.py. Every step is driven by state that survives a crash
(journal, outbox, bundle cache), so a restarted agent resumes where it stopped.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

from fedge.protocol import timeline
from fedge.protocol.blob_server import BlobServer
from fedge.protocol.bundle import Bundle
from fedge.protocol.chunks import decode_frame
from fedge.protocol.errors import CodecError, FedgeError, MessageError, TransferError
from fedge.protocol.invitations import Invitation, as_seen_by, invites
from fedge.protocol.messages import (
    Ack,
    FetchRequest,
    Message,
    RoundAbort,
    RoundTask,
    new_msg_id,
    parse_message,
)
from fedge.protocol.signing import load_trusted_keys
from fedge.protocol.sqlite_samples import DataError
from fedge.protocol.topics import Topics, validate_name
from fedge.protocol.transport import Transport

from .async_slots import AsyncSlots
from .backends import TrainingBackend, create_backend
from .bundle_cache import BundleCache
from .clock import Clock, SystemClock
from .config import AgentConfig
from .eligibility import Decision, EligibilityPolicy
from .fetches import Fetches
from .instance_lock import InstanceLock, write_link_problem
from .pacing import poll_seconds
from .round_machine import (
    INTERRUPTED,
    Action,
    RoundFacts,
    Step,
    after_training,
    next_step,
    objects_to_keep,
    outbox_steps,
    report_step,
    round_news,
)
from .round_runner import RoundRunner
from .state import AgentState, StateError
from .status_message import offline_status, status_message

log = logging.getLogger(__name__)

REST_SLICE_SECONDS = 0.1  # how late a stop request may interrupt a rest between batches


class Agent:
    """A device taking part in one federation, over the ``transport`` it is given."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        transport: Transport,
        backend: TrainingBackend | None = None,
        clock: Clock | None = None,
    ) -> None:
        validate_name(config.id)
        self.cfg = config
        self.transport = transport
        self.clock = clock or SystemClock()
        self.topics = Topics(config.federation)
        self._lock = InstanceLock(config.state_path)  # one agent per state directory
        self.state = AgentState(config.state_path / "agent.db")
        keys = load_trusted_keys(config.trusted_keys)
        self.bundles = BundleCache(config.state_path / "bundles", keys, state=self.state)
        self.backend = backend or create_backend(config.backend, threads=config.threads)
        self.policy = EligibilityPolicy(
            config.eligibility,
            minutes_today=self.state.training_minutes,
            clock=self.clock.monotonic,
        )
        self._stop = threading.Event()
        self.runner = RoundRunner(
            config,
            self.backend,
            self.state,
            self.policy,
            self.clock,
            stopping=self._stop.is_set,
            on_decision=self._on_training_decision,
            sleep=self._rest,  # a CPU-budget rest ends soon after stop()
        )
        self.fetches = Fetches(self._request_chunks, clock=self.clock.monotonic)
        self.server = BlobServer(self._publish, lookup=self.state.outbox_blob)
        self.task: RoundTask | None = None
        self.decision = Decision(True)
        self.rounds_done = 0
        self._prepare_after_ack: Bundle | None = None  # see _train
        self._last_offer: dict[str, float] = {}  # outbox sha256 -> last send (monotonic)
        self._last_report: dict[tuple[str, int], float] = {}  # evaluation report -> last send
        self._eval_acked: set[tuple[str, int]] = set()
        self._aborted: set[tuple[str, int]] = set()  # rounds aborted by this process
        self._last_check = float("-inf")
        self._status = "online"
        self._was_connected = False
        self._seen_task: RoundTask | None = None  # the last task received (for the log)
        self._broadcast: RoundTask | None = None  # round/current as published (names no one)
        self._invitation: Invitation | None = None  # the last one on agent/<id>/invite
        self._link_problem = ""
        self.slots = AsyncSlots(config.id)  # asynchronous runs (docs/async.md)

    # ---- lifecycle ----
    def stop(self) -> None:
        """Ask the agent to stop (safe from a signal handler): training ends at the next batch
        and its round is journaled interrupted, to be trained again after a restart."""
        self._stop.set()

    def _rest(self, seconds: float) -> None:
        """Sleep in short slices until ``seconds`` pass or stop() is called. (Not
        ``Event.wait``: stop() runs in a signal handler on this very thread, and setting an
        Event whose lock this thread holds inside wait() would deadlock.)"""
        end = time.monotonic() + seconds
        while not self._stop.is_set() and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, REST_SLICE_SECONDS))

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        """Subscribe, connect, read the sensors once and say we are online."""
        me = self.cfg.id
        for topic in (
            self.topics.round_current,
            self.topics.round_params,  # pushed parameters shared by a large round's devices
            self.topics.round_async,
            self.topics.agent_cmd(me),
            self.topics.agent_down(me),
            self.topics.agent_invite(me),
        ):
            self.transport.subscribe(topic)
        self.transport.start()
        self.decision = self.policy.check()
        self._last_check = self.clock.monotonic()
        if not self.decision.eligible:
            log.info("not eligible to train: %s", self.decision.reason)
        self._publish_status("online")

    def close(self) -> None:
        """Say we are offline, disconnect, close the state database."""
        try:
            self.transport.stop(final=offline_status(self.cfg, self.backend.name))
        finally:
            self.state.close()
            self._lock.release()

    def poll_seconds(self) -> float:
        busy = self.fetches.busy or bool(self._last_offer) or bool(self._last_report)
        return poll_seconds(self.task, self.cfg.id, busy=busy)

    def done(self, max_rounds: int | None) -> bool:
        """``max_rounds`` trained and acknowledged (tests and the demo stop there)."""
        return (
            max_rounds is not None
            and self.rounds_done >= max_rounds
            and not self.state.has_outbox()
        )

    def run(self, *, max_rounds: int | None = None) -> None:
        """Work until stop() (or ``max_rounds`` trained rounds, for tests and the demo)."""
        self.start()
        try:
            while not self._stop.is_set():
                try:
                    item = self.transport.get(timeout=self.poll_seconds())
                    if item is not None:
                        self.handle(*item)
                        if self.transport.pending():
                            continue  # drain the queue before doing slow work
                    self.tick()
                except StateError as exc:
                    self._on_state_error(exc)
                if self.done(max_rounds):
                    break
        finally:
            self.close()

    def _on_state_error(self, exc: StateError) -> None:
        """A read or write of the state database failed outside a round's own handling: a
        damaged file is rebuilt in place (what is readable salvaged, the outbox first); any
        other failure (disk full, permissions) is logged and the loop goes on, retrying."""
        if self.state.recover_if_damaged(exc):
            return
        log.error("state database problem: %s", exc)
        for _ in range(10):  # no tight loop while the disk stays full; sliced, not Event.wait:
            if self._stop.is_set():  # stop() runs in a signal handler on this thread
                break
            time.sleep(0.1)

    # ---- incoming ----
    def handle(self, topic: str, payload: bytes) -> None:
        """Take one received message; a malformed one is logged and changes nothing."""
        me = self.cfg.id
        try:
            if topic == self.topics.agent_down(me):
                self.fetches.on_chunk(decode_frame(payload))
            elif topic == self.topics.round_params:
                if payload:  # empty: the retained frame was cleared
                    self.fetches.on_chunk(decode_frame(payload))
            elif topic == self.topics.round_current:
                self._on_task(payload)
            elif topic == self.topics.round_async:
                self.slots.on_announce(payload)
            elif topic == self.topics.agent_invite(me):
                self._on_invitation(payload)
            elif topic == self.topics.agent_cmd(me):
                msg = parse_message(payload)
                if isinstance(msg, FetchRequest):
                    if not self.server.serve(msg, self.topics.agent_up_chunk(me)):
                        log.info("asked for %s, no longer in the outbox", msg.sha256[:12])
                    timeline.mark("delta_served", agent=me)
                elif isinstance(msg, Ack):
                    self._on_ack(msg)
                elif isinstance(msg, RoundTask):  # a slot of an asynchronous run
                    self.task = self.slots.on_slot(self.task, msg)
                else:
                    raise MessageError(f"unexpected {msg.TYPE!r} message on the command topic")
        except (MessageError, TransferError, CodecError) as exc:
            log.warning("ignored a bad message on %s: %s", topic, exc)

    def _on_task(self, payload: bytes) -> None:
        if not payload:
            self._broadcast = None
            if not self.slots.holding:  # an asynchronous run clears round/current
                self.task = None
            return
        broadcast = parse_message(payload, RoundTask)
        self._broadcast = broadcast
        task = as_seen_by(broadcast, self._invitation, self.cfg.id)
        news = round_news(self._seen_task, task, self.cfg.id, self.clock.time())
        if news:
            log.info("%s", news)
            if task.state == "open" and self.cfg.id in task.participants:
                timeline.mark("task_received", round=task.round, agent=self.cfg.id)
        self._seen_task = task
        self.task = task
        self.slots.holding = False

    def _on_invitation(self, payload: bytes) -> None:
        """An invitation (retained on this device's own topic) to the open round, or to the
        next one when it arrives before the task."""
        if not payload:
            self._invitation = None
            return
        invitation = parse_message(payload, Invitation)
        if not isinstance(invitation, Invitation) or invitation.agent != self.cfg.id:
            raise MessageError(f"an invitation on {self.cfg.id}'s topic names another device")
        self._invitation = invitation
        task = self._broadcast
        if self.slots.holding or task is None or not invites(invitation, task, self.cfg.id):
            return
        if (
            task.state == "open"
            and self.task is not None
            and self.cfg.id not in self.task.participants
        ):
            log.info(
                "invited to round %d of run %s (one of %d)", task.round, task.run_id, task.invited
            )
        self.task = as_seen_by(task, invitation, self.cfg.id)
        self._seen_task = self.task

    def _request_slot(self) -> None:
        task = self.task
        msg = self.slots.request(
            task,
            self.state.journal_status(task.run_id, task.round) if task else "",
            now=self.clock.time(),
            mono_now=self.clock.monotonic(),
            outbox_busy=self.state.has_outbox(),
            eligible=self.decision.eligible,
            connected=self.transport.connected,
            stopping=self._stop.is_set(),
        )
        if msg is not None:
            self._publish(self.topics.agent_up_msg(self.cfg.id), msg.encode())

    def _on_ack(self, ack: Ack) -> None:
        timeline.mark("ack_received", round=ack.round, agent=self.cfg.id)
        if not ack.sha256:  # an evaluation report's ack (reports have no blob)
            if ack.accepted:
                log.info("round %d: report acked: %s", ack.round, ack.reason or "counted")
            else:
                log.warning("round %d: report refused: %s", ack.round, ack.reason)
            self._eval_acked.add((ack.run_id, ack.round))
            self._last_report.pop((ack.run_id, ack.round), None)
            return
        if ack.accepted:
            log.info("round %d: update %s accepted", ack.round, ack.sha256[:12])
            self.state.remove_outbox(ack.sha256, "acked", durable=False)  # see agent/state.py
        else:
            log.warning("round %d: update %s rejected: %s", ack.round, ack.sha256[:12], ack.reason)
            self.state.remove_outbox(ack.sha256, "rejected", ack.reason, durable=False)
        self.server.withdraw(ack.sha256)
        self._last_offer.pop(ack.sha256, None)
        bundle, self._prepare_after_ack = self._prepare_after_ack, None
        if bundle is not None:  # our part of the round is done: sessions for the next one
            self.runner.prepare_next(bundle)

    # ---- periodic work ----
    def tick(self) -> None:
        """Re-request stalled downloads, (re-)offer or expire the outbox, take the round's
        next step (which may train: it returns when training ends or is stopped)."""
        connected = self.transport.connected
        problem = getattr(self.transport, "problem", "")
        if problem != self._link_problem:  # for `fedge doctor` on this machine
            self._link_problem = problem
            write_link_problem(self.cfg.state_path, problem)
        if connected and not self._was_connected:
            # After a reconnect the broker may hold our Last Will ("offline", retained, e.g.
            # sent when the broker itself restarted): say again where we are, offer again.
            self._publish_status(self._status)
            self._last_offer.clear()
            self._last_report.clear()
            self.slots.last_request = None
        self._was_connected = connected
        self._check_eligibility()
        self.fetches.tick()
        self._work_outbox()
        self._send_report()
        self._work_on_round()
        self._request_slot()
        task = self.task
        if task is not None and task.state == "finished" and not self.state.has_outbox():
            self.task = None  # said in the log once, when the task came (round_news)

    def _check_eligibility(self, *, force: bool = False) -> Decision:
        """Re-read the sensors every ``check_seconds``; report a change in the status."""
        now = self.clock.monotonic()
        if not force and now - self._last_check < self.cfg.eligibility.check_seconds:
            return self.decision
        self._last_check = now
        decision = self.policy.check()
        if decision != self.decision:
            log.info(
                "eligible to train again"
                if decision.eligible
                else f"not eligible to train: {decision.reason}"
            )
            self.decision = decision
            self._publish_status(self._status)
        return decision

    def _on_training_decision(self, decision: Decision) -> None:
        if decision != self.decision:
            self.decision = decision
            self._publish_status("training")

    def _work_outbox(self) -> None:
        items = self.state.outbox()
        steps = outbox_steps(
            items,
            task=self.task,
            agent_id=self.cfg.id,
            now=self.clock.time(),
            mono_now=self.clock.monotonic(),
            last_sent=self._last_offer,
            base_interval=self.cfg.offer_retry_seconds,
            connected=self.transport.connected,
        )
        offers = {i.sha256: i for i in items}
        for step in steps:
            item = offers[step.sha256]
            if step.action is Action.EXPIRE:
                log.warning("round %d: unacknowledged update expired (deadline passed)", item.round)
                self.state.remove_outbox(item.sha256, "expired", step.reason)
                self.server.withdraw(item.sha256)
                self._last_offer.pop(item.sha256, None)
            else:
                self._publish(self.topics.agent_up_msg(self.cfg.id), item.offer)
                self._last_offer[item.sha256] = self.clock.monotonic()
                timeline.mark("offer_sent", round=item.round, agent=self.cfg.id)

    def _send_report(self) -> None:
        """Send the open evaluation round's report (again) until the orchestrator acks it."""
        task = self.task
        key = (task.run_id, task.round) if task is not None else None
        self._last_report = {k: v for k, v in self._last_report.items() if k == key}
        if task is None or key is None:
            return
        status, report = self.state.journal_entry(task.run_id, task.round)
        step = report_step(
            task,
            agent_id=self.cfg.id,
            journal=status,
            acked=key in self._eval_acked,
            connected=self.transport.connected,
            mono_now=self.clock.monotonic(),
            last_sent=self._last_report.get(key),
            base_interval=self.cfg.offer_retry_seconds,
        )
        if step.action in (Action.OFFER, Action.REOFFER) and report:
            self._publish(self.topics.agent_up_msg(self.cfg.id), report.encode())
            self._last_report[key] = self.clock.monotonic()

    def _work_on_round(self) -> None:
        while self._take_step():
            pass

    def _take_step(self) -> bool:
        """Decide and carry out one step; True if it made progress worth deciding again on."""
        task = self.task
        journal = self.state.journal_status(task.run_id, task.round) if task else ""
        if task is not None and (task.run_id, task.round) in self._aborted:
            journal = "aborted"  # even if the journal write failed (a full disk)
        self.fetches.keep_only(objects_to_keep(task, self.cfg.id, journal))
        facts = RoundFacts(
            task,
            self.cfg.id,
            journal,
            self.clock.time(),
            self.transport.connected,
            stopping=self._stop.is_set(),
        )
        step = next_step(
            facts,
            eligibility=lambda: self._check_eligibility(force=True),
            bundle_ready=lambda: (
                task is not None and self.bundles.get(task.bundle_hash) is not None
            ),
            params_ready=lambda: task is not None and self.fetches.has(task.params.sha256),
        )
        if task is None or step.action in (Action.IGNORE, Action.WAIT):
            return False
        if step.action is Action.ABORT:
            self._abort(task, step.reason)
        elif step.action is Action.FETCH_BUNDLE:
            return self._install_bundle(task)
        elif step.action is Action.FETCH_PARAMS:
            if task.params.sha256 not in self.fetches.transfers:
                timeline.mark("params_requested", round=task.round, agent=self.cfg.id)
            return self.fetches.get(task.params, pushed=task.params_pushed) is not None
        else:
            self._run_round(task, step)
        return False

    def _install_bundle(self, task: RoundTask) -> bool:
        archive = self.fetches.get(task.bundle)
        if archive is None:
            return False
        self.fetches.discard(task.bundle.sha256)
        try:
            self.bundles.add(archive, task.bundle_hash)
        except FedgeError as exc:
            self._abort(task, f"bundle refused: {exc}")
            return False
        return True

    def _run_round(self, task: RoundTask, step: Step) -> None:
        bundle = self.bundles.get(task.bundle_hash)
        params = self.fetches.blobs.get(task.params.sha256)
        if bundle is None or params is None:  # the cached copy failed verification just now
            return
        try:
            if step.action in (Action.EVALUATE, Action.STATISTICS):
                if step.action is Action.STATISTICS:
                    report: Message = self.runner.statistics(task, bundle)
                else:
                    report = self.runner.evaluate(task, bundle, params)
                # journaled with the report, so a restarted agent sends the same report again
                self.state.set_journal(
                    task.run_id, task.round, "evaluated", report.encode().decode()
                )
                self._send_report()
            else:
                self._train(task, bundle, params)
        except DataError as exc:
            self._abort(task, f"local data problem: {exc}")
        except FedgeError as exc:
            self._abort(task, str(exc))
            self.bundles.reverify(task.bundle_hash)  # damaged on disk? then fetched again
        except Exception as exc:  # noqa: BLE001 - a backend bug must not kill the daemon
            log.exception("round %d: training failed", task.round)
            self._abort(task, f"training failed: {type(exc).__name__}: {exc}")
            self.bundles.reverify(task.bundle_hash)
        finally:
            self.fetches.drop_completed()

    def _train(self, task: RoundTask, bundle: Bundle, params: bytes) -> None:
        started = self.clock.monotonic()
        # not durable: a round journaled "training" or not at all is trained again alike
        self.state.set_journal(task.run_id, task.round, "training", durable=False)
        timeline.mark("train_start", round=task.round, agent=self.cfg.id)
        samples = self.runner.read_local(bundle, task.standardize)
        self._publish_status("training")
        try:
            update = self.runner.train(task, bundle, params, samples)
            timeline.mark("train_end", round=task.round, agent=self.cfg.id)
            step = after_training(update.problem, stopping=self._stop.is_set())
            if step.action is Action.INTERRUPT:
                log.info(
                    "round %d: %s; it will be trained again after a restart",
                    task.round,
                    step.reason,
                )
                self.state.set_journal(task.run_id, task.round, INTERRUPTED, step.reason)
                return
            if step.action is Action.ABORT:
                self._abort(task, step.reason)
                return
            item, residual = self.runner.build_offer(task, update)
            # the budget's seconds in the outbox's transaction: one fsync before the offer
            seconds = self.runner.unsaved_seconds
            self.state.add_outbox(item, residual=residual, training_seconds=seconds)
            self.runner.take_seconds()
        finally:
            self.runner.save_seconds()  # no delta saved them: stopped, diverged or failed
        self.rounds_done += 1
        log.info(
            "round %d: trained %d steps on %d samples, loss %.4f, %.1f s; offering %d-byte delta",
            task.round,
            update.steps,
            update.num_samples,
            update.loss,
            self.clock.monotonic() - started,
            len(item.blob or b""),
        )
        self._work_outbox()  # the offer first: the round waits for it, not for the status
        self._publish_status("idle")
        # the next round's sessions: built once the orchestrator acks (the offer is out then;
        # built right here, they held the GIL while paho's thread should send the offer)
        self._prepare_after_ack = bundle

    # ---- outgoing ----
    def _abort(self, task: RoundTask, reason: str) -> None:
        log.warning("round %d aborted: %s", task.round, reason)
        self._aborted.add((task.run_id, task.round))
        try:
            self.state.set_journal(task.run_id, task.round, "aborted", reason)
        except (FedgeError, sqlite3.Error, OSError) as exc:  # e.g. a full disk
            # the orchestrator must hear of the abort all the same; this process remembers it
            log.error("round %d: could not journal the abort: %s", task.round, exc)
        msg = RoundAbort(
            msg_id=new_msg_id(),
            agent=self.cfg.id,
            run_id=task.run_id,
            round=task.round,
            reason=reason[:1000],
        )
        self._publish(self.topics.agent_up_msg(self.cfg.id), msg.encode())
        self._publish_status("idle", problem=reason)

    def _request_chunks(self, sha256: str, indices: list[int]) -> None:
        me = self.cfg.id
        req = FetchRequest(msg_id=new_msg_id(), agent=me, sha256=sha256, indices=indices)
        self._publish(self.topics.agent_up_msg(me), req.encode())

    def _publish(self, topic: str, payload: bytes) -> None:
        self.transport.publish(topic, payload)

    def _publish_status(self, state: str, problem: str = "") -> None:
        self._status = state
        status = status_message(
            self.cfg.id,
            state,
            backend=self.backend.name,
            eligible=self.decision.eligible,
            # a TLS, login or shared-credentials problem of the link outranks the rest
            reason=problem or getattr(self.transport, "problem", "") or self.decision.reason,
            num_samples=self.runner.num_samples,
            now=self.clock.time(),
        )
        self.transport.publish(self.topics.agent_status(self.cfg.id), status.encode(), retain=True)

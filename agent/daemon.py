"""The agent's main loop: follow the open round, fetch what it needs, train, offer the delta.

One thread does the work; paho's network thread only queues messages. Every step is driven
by state that survives a crash (journal, outbox, bundle cache), so a restarted agent resumes:
an offered delta is offered again, an interrupted training round is trained again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedge.protocol.chunks import blob_ref, chunk_bytes, decode_frame, encode_frame
from fedge.protocol.errors import CodecError, FedgeError, MessageError, TransferError
from fedge.protocol.messages import (
    Ack,
    BlobRef,
    EvalReport,
    FetchRequest,
    RoundAbort,
    RoundTask,
    Status,
    UpdateOffer,
    new_msg_id,
    parse_message,
)
from fedge.protocol.mqtt_link import MqttLink
from fedge.protocol.sqlite_samples import DataError, read_samples
from fedge.protocol.tensors import check_finite, decode_tensors
from fedge.protocol.topics import Topics, validate_name
from fedge.protocol.transfer import PullTransfer

from .backends import TrainingBackend, create_backend
from .bundle_cache import BundleCache
from .config import AgentConfig
from .delta_encoding import encode_for_round
from .eligibility import Decision, DutyCycle, EligibilityPolicy
from .local_evaluation import evaluate_global, input_shape
from .local_training import train_locally
from .pacing import poll_seconds, resend_due, resend_interval
from .state import AgentState, OutboxItem

log = logging.getLogger(__name__)

FINAL_STATES = ("offered", "acked", "rejected", "aborted", "evaluated", "expired")
# an outbox entry is dropped this long after its round's deadline (tolerates clock skew between
# the device and the orchestrator, which closes the round at the deadline by its own clock)
OUTBOX_GRACE_SECONDS = 30.0


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fedge")
    except Exception:
        return "dev"


class Agent:
    """A device taking part in one federation."""

    def __init__(self, config: AgentConfig, *, backend: TrainingBackend | None = None) -> None:
        validate_name(config.id)
        self.cfg = config
        self.topics = Topics(config.federation)
        root = config.state_path
        self.state = AgentState(root / "agent.db")
        keys = [Path(p).read_bytes() for p in config.trusted_keys]
        self.bundles = BundleCache(root / "bundles", keys)
        self.backend = backend or create_backend(config.backend, threads=config.threads)
        offline = Status(
            agent=config.id, state="offline", backend=self.backend.name, version=_version()
        )
        self.link = MqttLink(
            config.mqtt,
            client_id=config.id,
            will=(self.topics.agent_status(config.id), offline.encode()),
        )
        self.task: RoundTask | None = None
        self._downloads: dict[str, PullTransfer] = {}
        self._blobs: dict[str, bytes] = {}  # downloaded objects kept for the current round
        self._served: dict[str, bytes] = {}  # outbox blobs being fetched by the orchestrator
        self._last_offer: dict[str, float] = {}  # sha256 or eval/run/round -> last send
        self._eval_acked: set[tuple[str, int]] = set()
        self._num_samples = 0
        self._stop = threading.Event()
        self.rounds_done = 0
        self.policy = EligibilityPolicy(
            config.eligibility, minutes_today=self.state.training_minutes
        )
        self.decision = Decision(True)
        self._last_check = float("-inf")
        self._status = "online"
        self._was_connected = False

    # ---- lifecycle ----
    def stop(self) -> None:
        self._stop.set()

    def run(self, *, max_rounds: int | None = None) -> None:
        """Work until stop() (or ``max_rounds`` trained rounds, for tests and the demo)."""
        me = self.cfg.id
        for topic in (
            self.topics.round_current,
            self.topics.agent_cmd(me),
            self.topics.agent_down(me),
        ):
            self.link.subscribe(topic)
        self.link.start()
        self.decision = self.policy.check()
        self._last_check = time.monotonic()
        if not self.decision.eligible:
            log.info("not eligible to train: %s", self.decision.reason)
        self._publish_status("online")
        try:
            while not self._stop.is_set():
                busy = bool(self._downloads) or bool(self._last_offer)
                item = self.link.get(timeout=poll_seconds(self.task, me, busy=busy))
                if item is not None:
                    self._dispatch(*item)
                    if not self.link.messages.empty():
                        continue  # drain the queue before doing slow work
                self._tick()
                if (
                    max_rounds is not None
                    and self.rounds_done >= max_rounds
                    and not self.state.has_outbox()
                ):
                    break
                if (
                    self.task is not None
                    and self.task.state == "finished"
                    and not self.state.has_outbox()
                ):
                    log.info(
                        "run %s finished; agent stays connected for the next run", self.task.run_id
                    )
                    self.task = None
        finally:
            offline = Status(
                agent=me, state="offline", backend=self.backend.name, version=_version()
            )
            self.link.stop(final=(self.topics.agent_status(me), offline.encode()))
            self.state.close()

    # ---- incoming ----
    def _dispatch(self, topic: str, payload: bytes) -> None:
        try:
            if topic == self.topics.agent_down(self.cfg.id):
                chunk = decode_frame(payload)
                transfer = self._downloads.get(chunk.sha256)
                if transfer is not None and transfer.on_chunk(chunk):
                    self._blobs[chunk.sha256] = transfer.result  # type: ignore[assignment]
                    del self._downloads[chunk.sha256]
            elif topic == self.topics.round_current:
                if not payload:
                    self.task = None
                    return
                task = parse_message(payload, RoundTask)
                assert isinstance(task, RoundTask)
                if self.task is None or (task.run_id, task.round, task.state) != (
                    self.task.run_id,
                    self.task.round,
                    self.task.state,
                ):
                    log.info(
                        "round %d of run %s is %s (%d participants)",
                        task.round,
                        task.run_id,
                        task.state,
                        len(task.participants),
                    )
                self.task = task
            elif topic == self.topics.agent_cmd(self.cfg.id):
                msg = parse_message(payload)
                if isinstance(msg, FetchRequest):
                    self._serve(msg)
                elif isinstance(msg, Ack):
                    self._on_ack(msg)
                else:
                    raise MessageError(f"unexpected {msg.TYPE!r} message on the command topic")
        except (MessageError, TransferError, CodecError) as exc:
            log.warning("ignored a bad message on %s: %s", topic, exc)

    def _serve(self, req: FetchRequest) -> None:
        blob = self._served.get(req.sha256) or self.state.outbox_blob(req.sha256)
        if blob is None:
            log.info("orchestrator asked for %s which is no longer in the outbox", req.sha256[:12])
            return
        self._served[req.sha256] = blob
        ref = blob_ref(blob)
        for i in req.indices:
            if 0 <= i < ref.chunks:
                self.link.publish(
                    self.topics.agent_up_chunk(self.cfg.id),
                    encode_frame(ref, i, chunk_bytes(blob, i)),
                )

    def _on_ack(self, ack: Ack) -> None:
        if not ack.sha256:  # an evaluation report's ack (reports have no blob)
            log.info("round %d: evaluation report acked: %s", ack.round, ack.reason or "counted")
            self._eval_acked.add((ack.run_id, ack.round))
            self._last_offer.pop(f"eval/{ack.run_id}/{ack.round}", None)
            return
        if ack.accepted:
            log.info("round %d: update %s accepted", ack.round, ack.sha256[:12])
            self.state.remove_outbox(ack.sha256, "acked")
        else:
            log.warning("round %d: update %s rejected: %s", ack.round, ack.sha256[:12], ack.reason)
            self.state.remove_outbox(ack.sha256, "rejected", ack.reason)
        self._served.pop(ack.sha256, None)
        self._last_offer.pop(ack.sha256, None)

    # ---- periodic work ----
    def _tick(self) -> None:
        connected = self.link.connected
        if connected and not self._was_connected:
            # After a reconnect the broker may hold our Last Will ("offline", retained, e.g.
            # sent when the broker itself restarted): say again where we are, offer again.
            self._publish_status(self._status)
            self._last_offer.clear()
        self._was_connected = connected
        self._check_eligibility()
        for sha, transfer in list(self._downloads.items()):
            transfer.tick()
            if transfer.failed:
                log.warning("download of %s failed: %s; will retry", sha[:12], transfer.failed)
                del self._downloads[sha]
        self._retry_offers()
        self._resend_eval_report()
        self._work_on_round()

    def _check_eligibility(self, *, force: bool = False) -> Decision:
        """Re-read the sensors every ``check_seconds``; report a change in the status."""
        now = time.monotonic()
        if not force and now - self._last_check < self.cfg.eligibility.check_seconds:
            return self.decision
        self._last_check = now
        decision = self.policy.check()
        if decision != self.decision:
            if decision.eligible:
                log.info("eligible to train again")
            else:
                log.info("not eligible to train: %s", decision.reason)
            self.decision = decision
            self._publish_status(self._status)
        return decision

    def _retry_offers(self) -> None:
        for item in self.state.expire_outbox(time.time() - OUTBOX_GRACE_SECONDS):
            log.warning("round %d: unacknowledged update expired (deadline passed)", item.round)
            self._served.pop(item.sha256, None)
            self._last_offer.pop(item.sha256, None)
        if not self.link.connected:
            return
        now = time.monotonic()
        for item in self.state.outbox():
            every = resend_interval(
                self.task, self.cfg.id, item.run_id, item.round, self.cfg.offer_retry_seconds
            )
            if resend_due(self._last_offer.get(item.sha256), now, every):
                self.link.publish(self.topics.agent_up_msg(self.cfg.id), item.offer)
                self._last_offer[item.sha256] = now

    def _resend_eval_report(self) -> None:
        """Send the open evaluation round's report again until the orchestrator acks it."""
        task = self.task
        key = f"eval/{task.run_id}/{task.round}" if task is not None else ""
        for stale in [k for k in self._last_offer if k.startswith("eval/") and k != key]:
            del self._last_offer[stale]  # that round is over
        if task is None or task.state != "open" or not task.config.evaluate_only:
            return
        if (task.run_id, task.round) in self._eval_acked or not self.link.connected:
            self._last_offer.pop(key, None)
            return
        status, report = self.state.journal_entry(task.run_id, task.round)
        if status != "evaluated" or not report:
            return
        now = time.monotonic()
        every = resend_interval(
            task, self.cfg.id, task.run_id, task.round, self.cfg.offer_retry_seconds
        )
        if resend_due(self._last_offer.get(key), now, every):
            self.link.publish(self.topics.agent_up_msg(self.cfg.id), report.encode())
            self._last_offer[key] = now

    def _fetch(self, ref: BlobRef) -> bytes | None:
        """The object's bytes if downloaded; otherwise start or continue the download."""
        if ref.sha256 in self._blobs:
            return self._blobs[ref.sha256]
        if ref.sha256 not in self._downloads:
            me = self.cfg.id

            def request(indices: list[int], sha: str = ref.sha256) -> None:
                req = FetchRequest(msg_id=new_msg_id(), agent=me, sha256=sha, indices=indices)
                self.link.publish(self.topics.agent_up_msg(me), req.encode())

            transfer = PullTransfer(ref, request)
            self._downloads[ref.sha256] = transfer
            if ref.size == 0:
                self._blobs[ref.sha256] = b""
                return b""
            transfer.start()
        return None

    def _work_on_round(self) -> None:
        task = self.task
        if task is None or task.state != "open" or self.cfg.id not in task.participants:
            # no re-requests for objects no round of ours needs; a bundle download continues
            keep = task.bundle.sha256 if task is not None else None
            self._downloads = {k: v for k, v in self._downloads.items() if k == keep}
            self._blobs = {k: v for k, v in self._blobs.items() if k == keep}
            return
        if self.state.journal_status(task.run_id, task.round) in FINAL_STATES:
            return
        if task.deadline and time.time() > task.deadline:
            return
        if not self.link.connected:
            return
        decision = self._check_eligibility(force=True)
        if not decision.eligible:
            self._abort(task, f"not eligible: {decision.reason}")
            return
        bundle = self.bundles.get(task.bundle_hash)
        if bundle is None:
            archive = self._fetch(task.bundle)
            if archive is None:
                return
            try:
                bundle = self.bundles.add(archive, task.bundle_hash)
            except FedgeError as exc:
                self._blobs.pop(task.bundle.sha256, None)
                self._abort(task, f"bundle refused: {exc}")
                return
            self._blobs.pop(task.bundle.sha256, None)
        params_bytes = self._fetch(task.params)
        if params_bytes is None:
            return
        try:
            if task.config.evaluate_only:
                self._evaluate_round(task, bundle, params_bytes)
            else:
                self._train_round(task, bundle, params_bytes)
        except DataError as exc:
            self._abort(task, f"local data problem: {exc}")
        except FedgeError as exc:
            self._abort(task, str(exc))
        except Exception as exc:  # noqa: BLE001 - a backend bug must not kill the daemon
            log.exception("round %d: training failed", task.round)
            self._abort(task, f"training failed: {type(exc).__name__}: {exc}")
        finally:
            self._blobs.clear()

    def _abort(self, task: RoundTask, reason: str) -> None:
        log.warning("round %d aborted: %s", task.round, reason)
        self.state.set_journal(task.run_id, task.round, "aborted", reason)
        msg = RoundAbort(
            msg_id=new_msg_id(),
            agent=self.cfg.id,
            run_id=task.run_id,
            round=task.round,
            reason=reason[:1000],
        )
        self.link.publish(self.topics.agent_up_msg(self.cfg.id), msg.encode())
        self._publish_status("idle", problem=reason)

    def _should_stop(self, started: float) -> Callable[[], str]:
        """The per-batch callback: stop requests, eligibility changes, and the CPU budget."""
        duty = DutyCycle(self.cfg.max_cpu_percent)
        last = [float("-inf")]

        def check() -> str:
            if self._stop.is_set():
                return "agent stopping"
            duty.pause()
            now = time.monotonic()
            if now - last[0] >= 0.5:  # sensors at most twice a second
                last[0] = now
                decision = self.policy.check(extra_minutes=(now - started) / 60.0)
                if decision != self.decision:
                    self.decision = decision
                    self._publish_status("training")
                if not decision.eligible:
                    return f"no longer eligible: {decision.reason}"
            return ""

        return check

    def _read_local(self, bundle):
        """The device's rows, re-read every round (rows added since are used)."""
        shape = input_shape(bundle)
        samples = read_samples(
            self.cfg.data, expected_features=int(np.prod(shape)) if shape else None
        )
        if len(samples) == 0:
            raise DataError(f"no rows in {self.cfg.data.path} match the data source")
        self._num_samples = len(samples)
        return samples

    def _evaluate_round(self, task: RoundTask, bundle, params_bytes: bytes) -> None:
        """Federated evaluation: the global model on the validation split, no training."""
        samples = self._read_local(bundle)
        global_params = decode_tensors(params_bytes)
        check_finite(global_params)
        n, metrics = evaluate_global(
            self.backend, bundle, global_params, samples, self.cfg.validation_fraction
        )
        report = EvalReport(
            msg_id=new_msg_id(),
            agent=self.cfg.id,
            run_id=task.run_id,
            round=task.round,
            model_version=task.model_version,
            num_samples=n,
            metrics=metrics,
        )
        # journaled with the report, so a restarted agent sends the same report again
        self.state.set_journal(task.run_id, task.round, "evaluated", report.encode().decode())
        log.info(
            "round %d: evaluated model v%d on %d rows: %s",
            task.round,
            task.model_version,
            n,
            ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())),
        )
        self._resend_eval_report()

    def _train_round(self, task: RoundTask, bundle, params_bytes: bytes) -> None:
        started = time.monotonic()
        self.state.set_journal(task.run_id, task.round, "training")
        samples = self._read_local(bundle)
        self._publish_status("training")
        update = train_locally(
            self.backend,
            bundle,
            samples,
            decode_tensors(params_bytes),
            task.config,
            seed_key=f"{self.cfg.id}/{task.config.seed}/{task.round}",
            validation_fraction=self.cfg.validation_fraction,
            should_stop=self._should_stop(time.monotonic()),
            count_seconds=lambda s: self.state.add_training_seconds(time.strftime("%Y-%m-%d"), s),
        )
        if update.problem:
            self._abort(task, update.problem)
            return
        blob, residual = encode_for_round(self.state, task, update.delta)
        ref = blob_ref(blob)
        offer = UpdateOffer(
            msg_id=new_msg_id(),
            agent=self.cfg.id,
            run_id=task.run_id,
            round=task.round,
            model_version=task.model_version,
            blob=ref,
            num_samples=update.num_samples,
            metrics=update.metrics,
        )
        self.state.add_outbox(
            OutboxItem(
                ref.sha256, task.run_id, task.round, offer.encode(), blob, deadline=task.deadline
            ),
            residual=residual,
        )
        self.rounds_done += 1
        log.info(
            "round %d: trained %d steps on %d samples, loss %.4f, %.1f s; offering %d-byte delta",
            task.round,
            update.steps,
            update.num_samples,
            update.loss,
            time.monotonic() - started,
            ref.size,
        )
        self._publish_status("idle")
        self._retry_offers()

    def _publish_status(self, state: str, problem: str = "") -> None:
        self._status = state
        eligible = self.decision.eligible
        if not eligible and state in ("online", "idle"):
            state = "ineligible"
        status = Status(
            agent=self.cfg.id,
            state=state,
            backend=self.backend.name,
            eligible=eligible,
            reason=(problem or self.decision.reason)[:500],
            num_samples=self._num_samples,
            version=_version(),
            ts=time.time(),
        )
        self.link.publish(self.topics.agent_status(self.cfg.id), status.encode(), retain=True)

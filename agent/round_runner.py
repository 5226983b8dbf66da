"""One round's local work on the device: read the rows, train or evaluate, build the offer.

It sits between the daemon (which decides, journals and publishes) and local_training /
local_evaluation (which know nothing of rounds, storage or the wire).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable

import numpy as np

from fedge.protocol.chunks import blob_ref
from fedge.protocol.data_contract import require_fit
from fedge.protocol.messages import (
    EvalReport,
    RoundTask,
    Standardization,
    StatsReport,
    UpdateOffer,
    new_msg_id,
)
from fedge.protocol.parameter_travel import travelling_delta
from fedge.protocol.sqlite_samples import DataError, Samples, read_samples
from fedge.protocol.standardization import local_stats
from fedge.protocol.tensors import check_finite, decode_tensors

from .backends import TrainingBackend
from .clock import Clock
from .config import AgentConfig
from .delta_encoding import encode_for_round
from .eligibility import Decision, DutyCycle, EligibilityPolicy
from .local_evaluation import evaluate_global
from .local_rows import LocalRowCache
from .local_training import LocalUpdate, train_locally
from .state import AgentState, OutboxItem

log = logging.getLogger(__name__)

SENSOR_SECONDS = 0.5  # during training, read the sensors at most this often
STOPPING = "agent stopping"


class RoundRunner:
    """Runs the training or evaluation of one round with the agent's backend and data."""

    def __init__(
        self,
        config: AgentConfig,
        backend: TrainingBackend,
        state: AgentState,
        policy: EligibilityPolicy,
        clock: Clock,
        *,
        stopping: Callable[[], bool],
        on_decision: Callable[[Decision], None],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``stopping``: whether the agent was asked to stop; ``on_decision`` receives every
        eligibility decision read during training (the daemon reports changes); ``sleep``
        rests between batches under a CPU budget (the daemon's wakes up on a stop request)."""
        self.cfg = config
        self.backend = backend
        self.state = state
        self.policy = policy
        self.clock = clock
        self._stopping = stopping
        self._on_decision = on_decision
        self._sleep = sleep
        self.num_samples = 0  # rows found in the last round (reported in the status)
        # (day, seconds) trained and not yet counted in the database: the daemon saves them
        # with the round's outbox entry (one transaction), or alone when there is no delta
        self._unsaved: tuple[str, float] | None = None
        self._rows = LocalRowCache()

    def read_local(self, bundle, standardize: Standardization | None = None) -> Samples:
        """The device's rows, read again whenever the file changed (rows added since are
        used; agent/local_rows.py), standardized with the run's statistics when the round
        task carries them."""
        stats = (standardize.mean, standardize.std) if standardize else None
        samples = self._rows.read(self.cfg.data, bundle, stats)  # DataError: says the fix
        if len(samples) == 0:
            raise DataError(f"no rows in {self.cfg.data.path} match the data source")
        self.num_samples = len(samples)
        return samples

    def train(self, task: RoundTask, bundle, params_bytes: bytes, samples: Samples) -> LocalUpdate:
        """Train the round's global model on ``samples``; the update's ``problem`` says why
        there is no delta (stopped, diverged). Frozen parameters that training cannot change
        are left out of the delta (``parameter_travel``): they would be zeros on the wire."""
        update = train_locally(
            self.backend,
            bundle,
            samples,
            decode_tensors(params_bytes),
            task.config,
            seed_key=f"{self.cfg.id}/{task.config.seed}/{task.round}",
            validation_fraction=self.cfg.validation_fraction,
            should_stop=self._should_stop(self.clock.monotonic()),
            count_seconds=self._count_seconds,
        )
        update.delta = travelling_delta(bundle.manifest, update.delta)
        return update

    def prepare_next(self, bundle) -> None:
        """After a round's offer is out: build the next round's sessions while the device
        waits (``TrainingBackend.prepare``). A failure here only loses the head start: the
        next load builds them again and reports what is wrong."""
        try:
            self.backend.prepare(bundle)
        except Exception as exc:  # noqa: BLE001 - the next load raises it with the round's handling
            log.warning("could not prepare the next round's sessions: %s", exc)

    def _count_seconds(self, seconds: float) -> None:
        day = time.strftime("%Y-%m-%d", time.localtime(self.clock.time()))
        if self._unsaved is not None:  # not taken since the last training: save that first
            self.save_seconds()
        self._unsaved = (day, seconds)

    @property
    def unsaved_seconds(self) -> tuple[str, float] | None:
        """The last training's (day, seconds) not yet counted in the database."""
        return self._unsaved

    def take_seconds(self) -> tuple[str, float] | None:
        """The last training's (day, seconds), for the caller to save (``AgentState.add_outbox``
        with the delta); None if already taken."""
        unsaved, self._unsaved = self._unsaved, None
        return unsaved

    def save_seconds(self) -> None:
        """Count the last training's seconds on their own (no delta to save them with)."""
        unsaved = self.take_seconds()
        if unsaved is not None:
            self.state.add_training_seconds(*unsaved)

    def _should_stop(self, started: float) -> Callable[[], str]:
        """The per-batch callback: stop requests, eligibility changes, and the CPU budget."""
        duty = DutyCycle(self.cfg.max_cpu_percent, sleep=self._sleep)
        last = [float("-inf")]

        def check() -> str:
            if self._stopping():
                return STOPPING
            duty.pause()
            now = self.clock.monotonic()
            if now - last[0] >= SENSOR_SECONDS:
                last[0] = now
                decision = self.policy.check(extra_minutes=(now - started) / 60.0)
                self._on_decision(decision)
                if not decision.eligible:
                    return f"no longer eligible: {decision.reason}"
            return ""

        return check

    def build_offer(self, task: RoundTask, update: LocalUpdate) -> tuple[OutboxItem, bytes | None]:
        """The outbox entry for a trained delta (encoded as the round asks) and the top-k
        residual to store with it in the same transaction."""
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
            # small enough for the orchestrator to take it inline: no fetch round trip
            inline=base64.b64encode(blob).decode() if 0 < ref.size <= task.inline_max_bytes else "",
        )
        item = OutboxItem(
            ref.sha256, task.run_id, task.round, offer.encode(), blob, deadline=task.deadline
        )
        return item, residual

    def evaluate(self, task: RoundTask, bundle, params_bytes: bytes) -> EvalReport:
        """Federated evaluation: the global model on the validation split, no training."""
        samples = self.read_local(bundle, task.standardize)
        global_params = decode_tensors(params_bytes)
        check_finite(global_params)
        n, metrics = evaluate_global(
            self.backend, bundle, global_params, samples, self.cfg.validation_fraction
        )
        log.info(
            "round %d: evaluated model v%d on %d rows: %s",
            task.round,
            task.model_version,
            n,
            ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())),
        )
        return EvalReport(
            msg_id=new_msg_id(),
            agent=self.cfg.id,
            run_id=task.run_id,
            round=task.round,
            model_version=task.model_version,
            num_samples=n,
            metrics=metrics,
        )

    def statistics(self, task: RoundTask, bundle) -> StatsReport:
        """Statistics round: per-feature count, sum and sum of squares of every local row
        (after feature_scale, in float64); a few numbers per feature, never a row.

        Refused (a FedgeError the daemon turns into an abort) under client-level DP: the
        statistics of raw features have no known bound, so no noise scale would protect them.
        """
        cfg = task.config
        if cfg.clip_norm > 0 or cfg.noise_multiplier > 0:
            raise DataError(
                "refusing to send feature statistics: client-level DP is on and statistics "
                "of unbounded raw features cannot be noised with a known sensitivity"
            )
        spec = bundle.manifest.input
        if len(bundle.manifest.inputs) > 1:
            raise DataError(
                f"refusing a statistics round: the model has {len(bundle.manifest.inputs)} "
                "inputs and federated standardization covers one"
            )
        if np.dtype(spec.dtype).kind != "f":
            raise DataError(
                f"refusing a statistics round: the model's input '{spec.name}' takes "
                f"{spec.dtype} ids, which are not standardized"
            )
        samples = read_samples(self.cfg.data, dtype=None)
        require_fit(samples, bundle.manifest, self.cfg.data)
        if len(samples) == 0:
            raise DataError(f"no rows in {self.cfg.data.path} match the data source")
        self.num_samples = len(samples)
        if isinstance(samples.x, tuple):  # one input mapped through [data.inputs.NAME]
            samples = samples.input(samples.input_names[0])
        stats = local_stats(samples.array)  # StatisticsError (a FedgeError): overflowing values
        log.info(
            "round %d: feature statistics of %d rows (%d features)",
            task.round,
            len(samples),
            stats.features,
        )
        return StatsReport(
            msg_id=new_msg_id(),
            agent=self.cfg.id,
            run_id=task.run_id,
            round=task.round,
            model_version=task.model_version,
            num_samples=len(samples),
            count=stats.count,
            sum=stats.sum,
            sumsq=stats.sumsq,
        )

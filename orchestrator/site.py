"""The site's side of a site round: the orchestrator of a site's own devices, one run per
central round.

To the central orchestrator a site is one device; its "local training" is a site round.
``SiteOrchestrator.begin(request)`` takes the central round (its run, round, global
parameters and training settings) and runs one local run of exactly one committed round over
the site's devices, starting from those parameters (they are the local run's version 0).
The result is the site's FedAvg step, ``version 1 - version 0`` (the devices' weighted mean
delta with ``server_lr`` 1), with the sum of the devices' counted samples as its weight: the
central FedAvg over sites is then the flat FedAvg over their devices (tests/unit/test_sites.py).

Crash safety is the orchestrator's own: the local run, its round and every accepted update
are in the site's SQLite store, named after the central round (``local_run_id``). A restarted
site that is asked for the same central round resumes that run (counted updates kept), or, if
it had already committed, reads the same result back: one aggregate per central round.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from fedge.protocol.bundle import Bundle
from fedge.protocol.errors import FedgeError
from fedge.protocol.messages import TrainConfig
from fedge.protocol.tensors import decode_tensors
from fedge.protocol.transport import Transport

from .round_metrics import training_metrics
from .server import Orchestrator
from .site_config import SiteConfig
from .strategies import create_strategy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteRequest:
    """One central round the site answers with one site round."""

    run_id: str  # the central run
    round: int
    params: bytes  # the central global parameters (safetensors)
    config: TrainConfig  # the central round's local training settings, passed to the devices
    deadline_seconds: float  # how long the site round may stay open


@dataclass
class SiteResult:
    """The site's aggregate of one central round."""

    delta: dict[str, np.ndarray]
    num_samples: int  # sum of the counted devices' training samples
    metrics: dict[str, float]
    devices: int  # updates the site counted


def local_run_id(central_run: str, round_no: int) -> str:
    """The site's run for one central round (at most 64 characters, a valid name)."""
    base = f"{central_run}-r{round_no}"
    if len(base) <= 64:
        return base
    digest = hashlib.sha256(central_run.encode()).hexdigest()[:16]
    return f"{central_run[:30]}-{digest}-r{round_no}"


def site_delta(v0: dict[str, np.ndarray], v1: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The site round's step: the committed model minus the parameters it started from."""
    return {name: (v1[name] - v0[name]).astype(v0[name].dtype) for name in v0}


class SiteOrchestrator(Orchestrator):
    """An orchestrator whose runs are site rounds asked for by ``begin``; idle in between."""

    def __init__(
        self,
        config: SiteConfig,
        *,
        transport: Transport,
        bundle: Bundle | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        config.rounds.rounds = 1  # one committed round per local run (= per central round)
        config.exit_when_done = False
        config.continue_run = False
        self._deadline_cap = config.rounds.deadline_seconds
        super().__init__(config, transport=transport, bundle=bundle, clock=clock)
        self.request: SiteRequest | None = None
        self.result: SiteResult | None = None

    # ---- asked by the site aggregator ----
    def begin(self, request: SiteRequest) -> SiteResult | None:
        """Start (or resume) the site round of ``request``; its result if it already exists."""
        self.request = request
        self.result = None
        run_id = local_run_id(request.run_id, request.round)
        if (
            self.store.run_exists(run_id)
            and (self.store.active_run() or {}).get("run_id") != run_id
        ):
            self.result = self._result_of(run_id)  # committed before a restart: same answer
            if self.result is not None:
                log.info("site round for central round %d already committed", request.round)
                return self.result
        self._retire_other_runs(run_id)
        # a fresh strategy per site round (a server momentum would mix central rounds)
        self.strategy = create_strategy(self.cfg.strategy, self.cfg.strategy_options)
        if self.store.run_exists(run_id) and self.store.active_run() is None:
            self.store.reopen_run(run_id)  # retired unanswered, and asked again: resume it
        self.cfg.rounds.deadline_seconds = max(
            1.0, min(self._deadline_cap, request.deadline_seconds)
        )
        if not self.store.run_exists(run_id):
            config = {"rounds": asdict(self.cfg.rounds), "strategy": self.strategy.describe()}
            config |= {"site_of": {"run_id": request.run_id, "round": request.round}}
            self.store.create_run(
                run_id,
                self.bundle.content_hash,
                config,
                request.params,
                hashlib.sha256(request.params).hexdigest(),
            )
            log.info(
                "site round for central run %s round %d: local run %s",
                request.run_id,
                request.round,
                run_id,
            )
        super()._resume_or_create_run()  # resumes run_id: it is the only active one
        if self.rounds.current is None and self.rounds.last_round == 0:
            # the site round takes the central round's number: devices seed their batch
            # order with it, so they train exactly as they would in a flat federation
            self.rounds.last_round = request.round - 1
        return None

    def give_up(self) -> None:
        """The central round no longer wants this site's answer (stopped or too late)."""
        self.request = None
        self.rounds.finished = True

    # ---- the orchestrator's lifecycle, for site rounds ----
    def _resume_or_create_run(self) -> None:
        if self.request is None:  # at start: nothing to do until the central round asks
            self.rounds.finished = True

    def train_config(self) -> TrainConfig:
        if self.request is None:
            return super().train_config()
        return self.request.config  # the devices train as the central round says

    def _finish(self) -> None:
        self._evaluate_pending()
        run_id = self.run_id
        self.store.finish_run(run_id)
        self.result = self._result_of(run_id)
        self._publish_task("closed")
        self.rounds.finished = True
        if self.result is not None:
            log.info(
                "site round %s committed: %d devices, %d samples",
                run_id,
                self.result.devices,
                self.result.num_samples,
            )

    def _retire_other_runs(self, keep: str) -> None:
        """A run of an earlier central round still open (the central round moved on): close
        it, so the new run is the one a restart resumes."""
        while (active := self.store.active_run()) is not None and active["run_id"] != keep:
            old = active["run_id"]
            for rec in self.store.rounds(old):
                if rec.state == "open":
                    self.store.close_round(
                        old, rec.round, "abandoned", "the central round moved on"
                    )
            self.store.finish_run(old)
            log.info("site run %s retired: its central round moved on", old)
        if self.rounds.current is not None and self.rounds.run_id != keep:
            self.rounds.current = None

    def _result_of(self, run_id: str) -> SiteResult | None:
        """The committed site round of ``run_id`` as the site's update, from the store alone."""
        committed = [r for r in self.store.rounds(run_id) if r.state == "committed"]
        if not committed:
            return None
        rec = committed[-1]
        v0 = decode_tensors(self.store.version_params(run_id, 0))
        v1 = decode_tensors(self.store.version_params(run_id, 1))
        claims = self.store.accepted_claims(run_id, rec.round)
        metrics = training_metrics(self.store.update_metrics(run_id, rec.round))
        metrics["site_devices"] = float(len(claims))
        if not claims:
            raise FedgeError(f"site run {run_id} committed without an accepted update")
        return SiteResult(
            site_delta(v0, v1), sum(n for _a, n in claims), metrics, devices=len(claims)
        )


def request_from_task(task, params: bytes, *, now: float, margin: float) -> SiteRequest:
    """The site round of a central ``RoundTask``: it must close ``margin`` s before the
    central deadline, so the aggregate still reaches the central orchestrator in time."""
    config = replace(task.config)
    return SiteRequest(
        run_id=task.run_id,
        round=task.round,
        params=params,
        config=config,
        deadline_seconds=task.deadline - now - margin,
    )

"""How the two rounds that train nothing close: federated evaluation and feature statistics.

A mixin of ``Orchestrator`` (orchestrator/server.py), moved out of it as it was: the closings
need the orchestrator's store, metrics, round machine and announcements, declared below.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from fedge.protocol.errors import FedgeError

from .round_metrics import federated_metrics
from .standardization_round import combine_reports

if TYPE_CHECKING:
    from fedge.protocol.bundle import Bundle

    from .evaluation import CentralEvaluator
    from .metrics_exporter import Metrics
    from .round_machine import RoundMachine
    from .store import RoundRecord, Store

log = logging.getLogger("fedge.orchestrator.server")  # the log lines stay where they were


class _Host(Protocol):
    """What the closings use of the ``Orchestrator`` they are mixed into."""

    store: Store
    metrics: Metrics
    rounds: RoundMachine
    evaluator: CentralEvaluator | None
    bundle: Bundle

    @property
    def run_id(self) -> str: ...

    def _stored_round(self, round_no: int) -> RoundRecord: ...

    def _event(self, kind: str, r: RoundRecord | None) -> None: ...

    def _publish_task(self, state: str) -> None: ...

    def _abandon(self, round_no: int, note: str) -> None: ...

    def _load_standardization(self, run_id: str) -> None: ...


class EvaluationClosings:
    """``_close_evaluation`` and ``_close_statistics`` of the synchronous orchestrator."""

    def _close_evaluation(self: _Host, round_no: int) -> None:
        """Federated evaluation: store the reports' sample-weighted means; the model stays."""
        metrics = federated_metrics(self.store.eval_reports(self.run_id, round_no))
        self.store.close_evaluation(self.run_id, round_no, metrics)
        r = self._stored_round(round_no)
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

    def _close_statistics(self: _Host, round_no: int) -> None:
        """Federated standardization: combine the reports, store them with the run, and
        re-score version 0 centrally on the standardized test rows (the baseline)."""
        try:
            mean, std, metrics = combine_reports(self.store.eval_reports(self.run_id, round_no))
        except FedgeError as exc:
            self._abandon(round_no, str(exc))
            return
        self.store.close_statistics(self.run_id, round_no, mean, std, metrics)
        self.metrics.inc("fedge_rounds_total", state="combined")
        self._load_standardization(self.run_id)
        self.rounds.on_statistics()
        if self.evaluator is not None and self.rounds.version == 0:
            baseline = self.evaluator.evaluate(self.bundle.initial_parameters())
            self.store.set_version_metrics(self.run_id, 0, baseline)
        log.info(
            "round %d combined feature statistics of %d rows on %d devices (%d features); "
            "the run trains on standardized features",
            round_no,
            metrics["stat_rows"],
            metrics["stat_devices"],
            len(mean),
        )
        self._event("round_statistics", self._stored_round(round_no))
        self._publish_task("closed")

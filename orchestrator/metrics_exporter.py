"""The orchestrator's Prometheus endpoint: ``GET /metrics`` on an optional loopback port.

Two sources, one ``prometheus_client`` registry:
- the store (``metrics_collector.StoreCollector``): devices, run, rounds, updates, versions,
  evaluation and privacy metrics, read from SQLite at scrape time;
- events only the running process sees, recorded through this small API: chunk bytes on the
  wire (``count_bytes``), aggregation and commit time (``observe_aggregation``,
  ``observe_commit``), what the per-device budgets cost nothing for (``count_dropped``,
  ``count_unrecorded``, ``count_withheld_frames``, ``count_suppressed_log_line``,
  ``count_ignored``: labels are reasons
  and kinds from our code, never a device id); plus the process's own CPU and memory.

The metric table is in docs/orchestrator.md.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from .device_budget import DROP_REASONS
from .metrics_collector import SelectionView, StoreCollector

if TYPE_CHECKING:
    from .config import RoundSettings

log = logging.getLogger(__name__)

# generate_latest writes the classic text format; newer clients label it 1.0.0, which
# Prometheus 2.x does not know: state the version the body really is.
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DIRECTIONS = ("down", "up")
IGNORED_KINDS = ("offer", "late_offer", "abort", "eval_report", "other")


class Metrics:
    """The metrics of one orchestrator; ``database`` adds the store-derived families.

    ``rounds``: the orchestrator's ``RoundSettings`` (targets and goal: which devices count as
    eligible and how many a round waits for).
    """

    def __init__(
        self, database: str | Path | None = None, rounds: RoundSettings | None = None
    ) -> None:
        disable_created_metrics()  # no *_created series: noise for Prometheus 2, and per process
        self.registry = CollectorRegistry()
        self._wire = Counter(
            "fedge_wire_bytes",
            "Chunk frames on the wire: down = bundle and parameters served, up = deltas received.",
            ["direction"],
            unit="bytes",
            registry=self.registry,
        )
        for d in DIRECTIONS:
            self._wire.labels(direction=d)
        self._aggregation = Histogram(
            "fedge_aggregation_duration_seconds",
            "Time to aggregate a round's accepted deltas into new parameters.",
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self._commit = Histogram(
            "fedge_commit_duration_seconds",
            "Time to evaluate and store a new model version (one transaction).",
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self._dropped = Counter(
            "fedge_device_messages_dropped",
            "Device messages dropped before parsing (per-device rate limit, retained on an up "
            "topic, empty, unsolicited chunk, bad topic).",
            ["reason"],
            registry=self.registry,
        )
        for reason in DROP_REASONS:
            self._dropped.labels(reason=reason)
        self._unrecorded = Counter(
            "fedge_refusals_unrecorded",
            "Refused, late or duplicate answers over a device's database budget for the round "
            "(or for another run): counted here instead of stored.",
            registry=self.registry,
        )
        self._suppressed = Counter(
            "fedge_log_lines_suppressed",
            "Per-message log lines over a device's log budget (summarised per window).",
            registry=self.registry,
        )
        self._withheld = Counter(
            "fedge_chunk_frames_withheld",
            "Chunk frames devices asked for over their budget (not sent; a pull asks again).",
            registry=self.registry,
        )
        self._ignored = Counter(
            "fedge_ignored_messages",
            "Messages about a round from devices that were not invited to it.",
            ["kind"],
            registry=self.registry,
        )
        for kind in IGNORED_KINDS:
            self._ignored.labels(kind=kind)
        ProcessCollector(registry=self.registry)
        if database is not None:
            self.registry.register(StoreCollector(database, selection_view(rounds)))
        self._legacy_warned = False

    # ---- events the store does not hold ----
    def count_bytes(self, direction: str, n: int) -> None:
        """``n`` bytes of chunk frames sent (``"down"``) or received (``"up"``)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r} unknown; one of {DIRECTIONS}")
        self._wire.labels(direction=direction).inc(max(0, n))

    def count_dropped(self, reason: str, n: int = 1) -> None:
        """``n`` device messages dropped unread for ``reason`` (one of ``DROP_REASONS``)."""
        if reason not in DROP_REASONS:
            raise ValueError(f"drop reason {reason!r} unknown; one of {DROP_REASONS}")
        self._dropped.labels(reason=reason).inc(max(0, n))

    def count_unrecorded(self) -> None:
        """One refusal counted in memory instead of written to the database."""
        self._unrecorded.inc()

    def count_withheld_frames(self, n: int) -> None:
        self._withheld.inc(max(0, n))

    def count_suppressed_log_line(self) -> None:
        self._suppressed.inc()

    def count_ignored(self, kind: str) -> None:
        """A message from a device that was not invited (``kind`` in ``IGNORED_KINDS``)."""
        self._ignored.labels(kind=kind if kind in IGNORED_KINDS else "other").inc()

    def observe_aggregation(self, seconds: float) -> None:
        self._aggregation.observe(max(0.0, seconds))

    def observe_commit(self, seconds: float) -> None:
        self._commit.observe(max(0.0, seconds))

    # ---- the old façade: every value it set is now read from the store ----
    def set(self, name: str, value: float, **labels: str) -> None:
        """Accepted and ignored: gauges are read from the store at scrape time."""
        self._legacy(name)

    def inc(self, name: str, by: float = 1.0, **labels: str) -> None:
        """Accepted and ignored: counters are derived from the stored rounds and updates."""
        self._legacy(name)

    def _legacy(self, name: str) -> None:
        if not self._legacy_warned:
            log.debug("metrics: %s is derived from the store; set/inc calls are ignored", name)
            self._legacy_warned = True

    def render(self) -> bytes:
        """The text exposition of every family (what ``/metrics`` serves)."""
        return generate_latest(self.registry)


def selection_view(rounds: RoundSettings | None) -> SelectionView:
    """The parts of ``RoundSettings`` the collector reads (defaults when ``rounds`` is None)."""
    if rounds is None:
        return SelectionView()
    return SelectionView(
        target_agents=list(rounds.target_agents),
        target_backends=list(rounds.target_backends),
        min_devices=int(rounds.min_devices),
        devices_per_round=int(rounds.devices_per_round),
    )


class MetricsServer:
    """``http://host:port/metrics`` in a daemon thread; ``port=0`` binds a free port (tests)."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        source = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                body = source.render()
                self.send_response(200)
                self.send_header("Content-Type", TEXT_CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("metrics: " + fmt, *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("Prometheus metrics on http://%s:%d/metrics", *self.httpd.server_address[:2])
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

"""Prometheus metrics in the text exposition format, served on an optional loopback port.

No dependency: ``prometheus_client`` is not needed for a handful of counters and gauges.
``GET /metrics`` returns e.g. ``fedge_rounds_total{state="committed"} 3``.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

HELP = {
    "fedge_rounds_total": ("counter", "Rounds closed, by final state."),
    "fedge_updates_total": ("counter", "Updates received, by outcome."),
    "fedge_update_bytes_total": ("counter", "Bytes of accepted deltas received."),
    "fedge_round_duration_seconds": ("gauge", "Duration of the last closed round."),
    "fedge_model_version": ("gauge", "Latest committed model version."),
    "fedge_current_round": ("gauge", "Round number currently open (0 if none)."),
    "fedge_devices": ("gauge", "Known devices, by state."),
}


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return "{" + inner + "}"


class Metrics:
    """Thread-safe counters and gauges keyed by (name, labels)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def inc(self, name: str, by: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + by

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = float(value)

    def clear(self, name: str) -> None:
        with self._lock:
            for key in [k for k in self._values if k[0] == name]:
                del self._values[key]

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        with self._lock:
            items = sorted(self._values.items())
        lines: list[str] = []
        done: set[str] = set()
        for (name, labels), value in items:
            if name not in done and name in HELP:
                kind, text = HELP[name]
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                done.add(name)
            lines.append(f"{name}{_labels(dict(labels))} {value:g}")
        return "\n".join(lines) + "\n"


class MetricsServer:
    """``http://host:port/metrics`` in a daemon thread; ``port=0`` in settings means off."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        registry = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                body = registry.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("metrics: " + fmt, *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("Prometheus metrics on http://%s:%d/metrics", *self.httpd.server_address[:2])
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

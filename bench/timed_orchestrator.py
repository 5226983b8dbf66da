"""Run the orchestrator as ``fedge orchestrator`` does, timing the steps of each round change.

Used by bench/round_overhead_bench.py to say where the round overhead goes. It wraps a few
methods of one ``Orchestrator`` instance (no change to the library) and appends one JSON line
per call to ``--timings``: ``{"step", "start", "end"}`` in ``time.time()`` seconds (the clock
the orchestrator's database uses). A method that no longer exists is skipped with a warning.

The ``open`` and ``close`` lines also carry the process's CPU seconds so far (``cpu``, all
threads) and its peak RSS in KiB since the previous ``open`` (``hwm_kib``: Linux's VmHWM, reset
at every open through /proc/self/clear_refs), so a round's CPU and peak memory can be read off.
``--per-message`` also times every ``handle`` and ``tick`` (one line per message: costly at
thousands of devices, so off by default).

Usage: python bench/timed_orchestrator.py --config o.toml --timings timings.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from fedge.orchestrator.config import OrchestratorConfig
from fedge.orchestrator.server import Orchestrator
from fedge.protocol.mqtt_link import MqttLink
from fedge.protocol.settings import load_settings

log = logging.getLogger("timed_orchestrator")


def _peak_rss_kib(reset: bool = False) -> int:
    """VmHWM of this process (KiB); ``reset`` starts a new peak (Linux >= 4.0)."""
    try:
        text = open("/proc/self/status").read()
        hwm = int(next(line.split()[1] for line in text.splitlines() if line.startswith("VmHWM")))
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return hwm
    except (OSError, StopIteration, ValueError):
        return 0


def _resources(step: str) -> dict[str, float]:
    if step not in ("open", "close"):
        return {}
    return {"cpu": time.process_time(), "hwm_kib": _peak_rss_kib(reset=step == "open")}


def _wrap(obj: Any, name: str, step: str, out: IO[str], label: Callable[..., str] | None = None):
    fn = getattr(obj, name, None)
    if fn is None:
        log.warning("%s has no %s: step %r not timed", type(obj).__name__, name, step)
        return

    def timed(*args: Any, **kwargs: Any) -> Any:
        start, cpu_start = time.time(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            tag = f"{step}:{label(*args, **kwargs)}" if label else step
            line = {"step": tag, "start": start, "end": time.time()} | _resources(step)
            if "cpu" in line:
                line["cpu_start"] = cpu_start
            out.write(json.dumps(line) + "\n")

    setattr(obj, name, timed)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--timings", required=True)
    ap.add_argument("--per-message", action="store_true", help="also time handle() and tick()")
    ap.add_argument("--profile", default="", help="write cProfile stats of the run here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    config = load_settings(OrchestratorConfig, args.config)
    orch = Orchestrator(config, transport=MqttLink(config.mqtt, client_id=config.client_id))
    signal.signal(signal.SIGTERM, lambda *_: orch.stop())
    with open(args.timings, "a", buffering=1) as out:
        _wrap(orch, "_close_round", "close", out)
        _wrap(orch, "_open_round", "open", out)
        _wrap(orch, "_publish_task", "publish", out, label=lambda state: state)
        _wrap(orch, "_event", "event", out)
        _wrap(orch, "_round_metrics", "round_metrics", out)
        _wrap(orch, "_load_global", "load_global", out)
        _wrap(orch.store, "commit_round", "commit", out)
        _wrap(orch.store, "open_round", "store_open", out)
        _wrap(orch.strategy, "configure_round", "select", out)
        _wrap(orch.registry, "eligible", "eligible", out)
        _wrap(orch.intake, "flush", "flush", out)
        if args.per_message:
            _wrap(orch, "handle", "dispatch", out)
            _wrap(orch, "tick", "step", out)
        if not args.profile:
            orch.run()
            return 0
        import cProfile

        # CPU time of this process, not wall time: on a shared machine a wall-clock profile
        # charges every preemption to whatever function was running
        profiler = cProfile.Profile(time.process_time)
        try:
            profiler.runcall(orch.run)
        finally:
            profiler.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())

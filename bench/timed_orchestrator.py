"""Run the orchestrator as ``fedge orchestrator`` does, timing the steps of each round change.

Used by bench/round_overhead_bench.py to say where the round overhead goes. It wraps a few
methods of one ``Orchestrator`` instance (no change to the library) and appends one JSON line
per call to ``--timings``: ``{"step", "start", "end"}`` in ``time.time()`` seconds (the clock
the orchestrator's database uses). A method that no longer exists is skipped with a warning.

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


def _wrap(obj: Any, name: str, step: str, out: IO[str], label: Callable[..., str] | None = None):
    fn = getattr(obj, name, None)
    if fn is None:
        log.warning("%s has no %s: step %r not timed", type(obj).__name__, name, step)
        return

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            tag = f"{step}:{label(*args, **kwargs)}" if label else step
            out.write(json.dumps({"step": tag, "start": start, "end": time.time()}) + "\n")

    setattr(obj, name, timed)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--timings", required=True)
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
        _wrap(orch, "handle", "dispatch", out)
        _wrap(orch, "tick", "step", out)
        orch.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

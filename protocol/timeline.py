"""Timing hooks: where a round's time goes, written only when asked for.

``mark("task_received", round=3)`` appends one JSON line ``{"event", "t", ...}`` (``t`` is
``time.time()``, the clock the orchestrator's database uses) to the file named by the
``FEDGE_TIMELINE`` environment variable, and does nothing when it is unset (one dict lookup).
bench/round_timeline_bench.py sets it per process and merges the files into a per-round
timeline. Hooks never raise: a timing file that cannot be written must not stop a round.
"""

from __future__ import annotations

import json
import os
import time
from typing import IO

ENV = "FEDGE_TIMELINE"

_out: IO[str] | None = None
_path = ""


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def mark(event: str, **fields: object) -> None:
    """Record that ``event`` happened now (with a few small fields: round, agent)."""
    global _out, _path
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        if _out is None or path != _path:
            _out = open(path, "a", buffering=1)  # noqa: SIM115 - kept open for the process
            _path = path
        _out.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
    except OSError:
        _out = None

"""What the dashboard page shows, as one JSON-ready dict read from an orchestrator database.

The page polls it (``GET /api/snapshot``); everything in it comes from one read snapshot of the
database, so the fleet, the open round and the curves agree with each other.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..buffered_store import BufferedStore
from ..store import Store
from .queries import DashboardQueries

MAX_DEVICES = 500  # rows in the fleet table; the totals count every device
MAX_REFUSED = 50  # newest refused updates listed
# Rounds (async: versions) the bytes chart and the refused list look back over: enough for a
# readable chart, and it bounds each poll's work on a run of thousands of rounds.
WINDOW_ROUNDS = 200


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics worth a curve: finite numbers, without sample counts."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and not k.endswith("samples")
    }


def _pick_run(store: Store, run_id: str | None) -> dict[str, Any] | None:
    runs = store.runs()
    if run_id is not None:
        return next((r for r in runs if r["run_id"] == run_id), None)
    return max(runs, key=lambda r: r["started"]) if runs else None


def build_snapshot(store: Store, run_id: str | None = None) -> dict[str, Any]:
    """The dashboard's data: run, fleet, open round or buffer, versions, refusals, bytes."""
    q = DashboardQueries(store)
    with q.snapshot():
        devices, totals, by_state = q.fleet(MAX_DEVICES)
        run = _pick_run(store, run_id)
        out: dict[str, Any] = {
            "now": time.time(),
            "run": None,
            "fleet": {
                "totals": totals,
                "by_state": by_state,
                "devices": devices,
                "shown": len(devices),
            },
            "round": None,
            "buffer": None,
            "rounds": {},
            "versions": [],
            "refused": [],
            "bytes": [],
            "window_rounds": WINDOW_ROUNDS,
        }
        if run is None:
            out["waiting"] = (
                f"run {run_id!r} is not in the database"
                if run_id
                else "no run yet: start `fedge orchestrator`"
            )
            return out
        rid = run["run_id"]
        b = BufferedStore(store)
        mode = b.run_mode(rid)
        out["run"] = {**run, "mode": mode}
        out["versions"] = [{**v, "metrics": _numeric(v["metrics"])} for v in q.versions(rid)]
        if mode == "async":
            out["buffer"] = {
                "buffered": len(b.buffered(rid)),
                "training": [
                    {"agent_id": s.agent_id, "version": s.version, "expires": s.expires}
                    for s in b.active_slots(rid)[:MAX_DEVICES]
                ],
                "counters": b.counters(rid),
            }
            out["refused"] = q.refused_slots(rid, MAX_REFUSED)
            last = out["versions"][-1]["version"] if out["versions"] else 0
            out["bytes"] = q.bytes_per_version(rid, last - WINDOW_ROUNDS + 1)
        else:
            r = q.open_round(rid)
            if r is not None:
                out["round"] = {
                    "round": r.round,
                    "kind": r.kind,
                    "model_version": r.model_version,
                    "reports": r.reports,
                    "goal": r.goal or len(r.participants),
                    "invited": len(r.participants),
                    "rejected": r.rejected,
                    "late": r.late,
                    "duplicates": r.duplicates,
                    "opened": r.opened,
                    "deadline": r.deadline,
                }
            out["rounds"] = q.round_states(rid)
            since = q.last_round(rid) - WINDOW_ROUNDS + 1
            out["refused"] = q.refused_updates(rid, since, MAX_REFUSED)
            # what the orchestrator served (bundle, parameters) per committed round
            down = {
                v["round"]: v["metrics"]["bytes_down"]
                for v in out["versions"]
                if "bytes_down" in v["metrics"]
            }
            out["bytes"] = [
                {**b, "down": down.get(b["round"])} for b in q.bytes_per_round(rid, since)
            ]
    return out

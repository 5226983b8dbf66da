"""Which run an orchestrator start trains, when it is not simply the active one.

`--continue` reopens the latest finished run of the bundle (refused, saying what to do, when
there is none or it already has every version asked for); a new run gets a timestamped id
that no earlier run of the database has.
"""

from __future__ import annotations

import logging
import time

from fedge.protocol.errors import ConfigError

from .store import Store

log = logging.getLogger(__name__)


def reopen_finished_run(store: Store, bundle_hash: str, rounds_goal: int) -> None:
    """`--continue`: the latest finished run of this bundle trains on from its last version
    up to ``rounds_goal`` (nothing to do when a run is still unfinished: it is resumed)."""
    if store.active_run() is not None:
        return
    run_id = store.latest_finished_run(bundle_hash)
    if run_id is None:
        raise ConfigError(
            "--continue: this database has no finished run of bundle "
            f"{bundle_hash[:12]}; start one without --continue"
        )
    version = store.latest_version(run_id)[0]
    if version >= rounds_goal:
        raise ConfigError(
            f"--continue: run {run_id} already has model v{version} and rounds.rounds "
            f"is {rounds_goal}; ask for more, e.g. --set rounds.rounds={version + 10}"
        )
    store.reopen_run(run_id)
    log.info("continuing finished run %s from model v%d up to v%d", run_id, version, rounds_goal)


def new_run_id(store: Store, bundle_hash: str, now: float) -> str:
    """``YYYYmmdd-HHMMSS-<bundle hash[:8]>``; short runs finish within a second, so a later
    run started in the same second gets a numeric suffix (``-2``, ``-3``, ...)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    base = f"{stamp}-{bundle_hash[:8]}"
    run_id, n = base, 1
    while store.run_exists(run_id):
        n += 1
        run_id = f"{base}-{n}"
    return run_id

"""kill -9 of a site aggregator mid site round: the restarted site keeps the update it had
counted, finishes the same site round and the central orchestrator counts one aggregate.

Real processes on real brokers (central + one bridged site, two agents). dev-1 trains slowly
(max_cpu_percent 1), so the site has counted dev-0's update while dev-1 still trains: the
site is killed then, and restarted on the same database and state directory.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from support.fleet import Fleet, agent_config, orchestrator_config
from support.sites import Site, central_broker, site_broker, site_config

from fedge.demo.data import make_federation

pytestmark = pytest.mark.integration

ROUNDS = {"rounds": 1, "min_devices": 2, "min_reports": 2, "deadline_seconds": 90}
TRAINING = {"local_epochs": 3, "batch_size": 16}
ROBUST_OFF = {"sample_cap_multiple": 0, "norm_multiple": 0}


def _accepted(db_path: Path) -> list[tuple[str, str, int]]:
    if not db_path.exists():
        return []
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT run_id, agent_id, round FROM updates WHERE status='accepted' ORDER BY id"
        ).fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return []
    finally:
        db.close()


def test_a_site_killed_mid_round_counts_each_update_once(tmp_path, digits_bundle_factory):
    data = make_federation(tmp_path / "data", n_devices=2, alpha=0.5, seed=1)
    bundle = digits_bundle_factory("adamw", 0.01)
    site = Site("site-a", ["dev-0", "dev-1"])
    central = central_broker(tmp_path / "central", [site])
    fleet = Fleet(tmp_path)
    brokers = [central, site_broker(tmp_path / "site-broker", site, central)]
    site_db = tmp_path / "site-a.db"
    site_cfg = site_config(
        site, bundle, site_db, tmp_path / "site-state", ROUNDS | {"offline_grace_seconds": 60},
        ROBUST_OFF,
    )  # fmt: skip
    try:
        for i, dev in enumerate(site.devices):
            extra = {"max_cpu_percent": 1.0} if dev == "dev-1" else {}
            cfg = agent_config(dev, site.broker, data.device_paths[i], tmp_path / dev, **extra)
            fleet.start(dev, "agent", cfg | {"offer_retry_seconds": 2.0})
        fleet.start("site-a", "orchestrator", site_cfg, "--role", "site")
        rounds = ROUNDS | TRAINING | {"min_devices": 1, "min_reports": 1}
        cfg = orchestrator_config(central, bundle, tmp_path / "central.db", None, rounds)
        fleet.start("orchestrator", "orchestrator", cfg | {"robust": ROBUST_OFF})

        end = time.monotonic() + 60
        while [a for _r, a, _n in _accepted(site_db)] != ["dev-0"]:
            assert time.monotonic() < end, f"dev-0 never counted\n{fleet.all_logs()}"
            assert len(_accepted(site_db)) < 2, "dev-1 was too fast to kill the site between"
            time.sleep(0.05)
        fleet.kill("site-a")  # SIGKILL: no goodbye, no flush
        killed_with = _accepted(site_db)
        fleet.start("site-a", "orchestrator", site_cfg, "--role", "site")
        assert fleet.wait("orchestrator", timeout=90) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()
        for b in reversed(brokers):
            b.stop()

    assert killed_with[0][1] == "dev-0"
    site_updates = _accepted(site_db)
    # the same site run: dev-0's update kept, not trained again; dev-1's added
    assert [(r, a) for r, a, _n in site_updates] == [
        (killed_with[0][0], "dev-0"),
        (killed_with[0][0], "dev-1"),
    ], fleet.all_logs()
    db = sqlite3.connect(tmp_path / "central.db")
    updates = db.execute("SELECT agent_id, status, num_samples FROM updates").fetchall()
    (state, reports) = db.execute("SELECT state, reports FROM rounds").fetchone()
    db.close()
    assert (state, reports) == ("committed", 1)
    accepted = [u for u in updates if u[1] == "accepted"]
    assert [u[0] for u in accepted] == ["site-a"]  # one aggregate for the central round
    sdb = sqlite3.connect(site_db)
    claims = sdb.execute("SELECT SUM(num_samples) FROM updates WHERE status='accepted'").fetchone()[
        0
    ]
    runs = sdb.execute("SELECT run_id, config FROM runs").fetchall()
    sdb.close()
    assert accepted[0][2] == claims  # the site's weight: both devices' samples
    assert len(runs) == 1 and json.loads(runs[0][1])["site_of"]["round"] == 1
    assert "training stopped" not in fleet.logs("dev-0")

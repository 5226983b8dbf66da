"""Two sites bridged to a central broker train like one flat federation of the same devices.

Real processes on three real Mosquitto brokers: a central orchestrator, two site aggregators
(`fedge orchestrator --role site`), two agent processes per site on the site's own broker; the
site brokers' bridges carry only the sites' device topics. The same four devices then train
in one flat federation on one broker. Plain FedAvg on both sides (robust caps off), so the
two runs differ only in float rounding: the final test accuracy agrees within 1 point, and
the central broker receives one delta per site per round instead of one per device.
"""

from __future__ import annotations

import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.fleet import Fleet, agent_config, orchestrator_config
from support.mosquitto import MosquittoBroker
from support.sites import (
    ORCH,
    Site,
    allow_sys_bytes,
    bytes_received,
    central_broker,
    site_broker,
    site_config,
)

from fedge.demo.data import make_federation

pytestmark = pytest.mark.integration

ROUNDS = 3
DEVICES = ["dev-0", "dev-1", "dev-2", "dev-3"]
ROBUST_OFF = {"sample_cap_multiple": 0, "norm_multiple": 0}  # plain FedAvg: exact equivalence


def _rounds(n: int) -> dict:
    return {
        "rounds": ROUNDS,
        "min_devices": n,
        "min_reports": n,
        "deadline_seconds": 60,
        "local_epochs": 2,
        "batch_size": 16,
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_federation(tmp_path_factory.mktemp("digits4"), n_devices=4, alpha=0.5, seed=0)


@pytest.fixture(scope="module")
def bundle(digits_bundle_factory):
    return digits_bundle_factory("adamw", 0.01)


def _central_results(db_path: Path) -> tuple[list[float], list[int], list[str]]:
    """Test accuracy per model version, bytes_up per round, and the round states."""
    db = sqlite3.connect(db_path)
    (run_id,) = db.execute("SELECT run_id FROM runs WHERE state='finished'").fetchone()
    acc = [
        json.loads(m)["test_accuracy"]
        for (m,) in db.execute(
            "SELECT metrics FROM model_versions WHERE run_id=? ORDER BY version", (run_id,)
        )
    ]
    rows = db.execute(
        "SELECT state, metrics FROM rounds WHERE run_id=? ORDER BY round", (run_id,)
    ).fetchall()
    db.close()
    return acc, [int(json.loads(m)["bytes_up"]) for _s, m in rows], [s for s, _m in rows]


def _run_flat(tmp: Path, data, bundle) -> dict:
    users = {ORCH: "orch-pw"} | {d: f"pw-{d}" for d in DEVICES}
    broker = MosquittoBroker(tmp / "broker", users=users, federation="flat", sys_interval=1)
    allow_sys_bytes(broker)
    broker.start()
    fleet = Fleet(tmp)
    try:
        for i, dev in enumerate(DEVICES):
            fleet.start(dev, "agent", agent_config(dev, broker, data.device_paths[i], tmp / dev))
        cfg = orchestrator_config(broker, bundle, tmp / "flat.db", data.test_path, _rounds(4))
        fleet.start("orchestrator", "orchestrator", cfg | {"robust": ROBUST_OFF})
        assert fleet.wait("orchestrator", timeout=120) == 0, fleet.all_logs()
        received = bytes_received(broker)
    finally:
        fleet.stop_all()
        broker.stop()
    acc, up, states = _central_results(tmp / "flat.db")
    assert states == ["committed"] * ROUNDS, fleet.all_logs()
    return {"accuracy": acc, "bytes_up": up, "received": received}


def _run_sites(tmp: Path, data, bundle) -> dict:
    sites = [Site("site-a", DEVICES[:2]), Site("site-b", DEVICES[2:])]
    central = central_broker(tmp / "central", sites)
    fleet = Fleet(tmp)
    brokers = [central]
    try:
        for site in sites:
            brokers.append(site_broker(tmp / f"{site.name}-broker", site, central))
            for dev in site.devices:
                i = DEVICES.index(dev)
                cfg = agent_config(dev, site.broker, data.device_paths[i], tmp / dev)
                fleet.start(dev, "agent", cfg)
            cfg = site_config(
                site,
                bundle,
                tmp / f"{site.name}.db",
                tmp / f"{site.name}-state",
                _rounds(len(site.devices)),
                ROBUST_OFF,
            )
            fleet.start(site.name, "orchestrator", cfg, "--role", "site")
        cfg = orchestrator_config(central, bundle, tmp / "central.db", data.test_path, _rounds(2))
        fleet.start("orchestrator", "orchestrator", cfg | {"robust": ROBUST_OFF})
        assert fleet.wait("orchestrator", timeout=120) == 0, fleet.all_logs()
        received = bytes_received(central)
    finally:
        fleet.stop_all()
        for b in reversed(brokers):
            b.stop()
    acc, up, states = _central_results(tmp / "central.db")
    assert states == ["committed"] * ROUNDS, fleet.all_logs()
    db = sqlite3.connect(tmp / "central.db")
    agents = {a for (a,) in db.execute("SELECT agent_id FROM updates WHERE status='accepted'")}
    db.close()
    assert agents == {"site-a", "site-b"}  # the central orchestrator never saw a device
    return {"accuracy": acc, "bytes_up": up, "received": received}


def test_two_bridged_sites_train_like_one_flat_federation(data, bundle, tmp_path):
    # the two federations are independent (own brokers, files, ports): run them side by side
    with ThreadPoolExecutor(2) as pool:
        flat_run = pool.submit(_run_flat, tmp_path / "flat", data, bundle)
        sites_run = pool.submit(_run_sites, tmp_path / "sites", data, bundle)
        flat, sites = flat_run.result(), sites_run.result()
    print(f"flat:  accuracy {flat['accuracy']}, bytes_up/round {flat['bytes_up']}")
    print(f"sites: accuracy {sites['accuracy']}, bytes_up/round {sites['bytes_up']}")
    print(f"central broker bytes received: flat {flat['received']}, sites {sites['received']}")
    assert flat["accuracy"][-1] > flat["accuracy"][0] + 0.2  # it learned something
    assert abs(sites["accuracy"][-1] - flat["accuracy"][-1]) <= 0.01
    # one delta per site instead of one per device: half the delta bytes with 2 sites of 2
    for f, s in zip(flat["bytes_up"], sites["bytes_up"], strict=True):
        assert 0.4 * f <= s <= 0.6 * f
    assert sites["received"] < 0.75 * flat["received"]

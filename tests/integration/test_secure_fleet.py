"""A provisioned fleet end to end: TLS + passwords + ACLs, signed bundles, client-level DP.

Real processes: Mosquitto on the files of ``fedge broker init``, the orchestrator and agents
started with the configs ``fedge broker init`` / ``fedge device add`` wrote (``mqtts://``,
the fleet's CA, the trusted signing key), and bundles that are tampered with or signed by
another key, which the agents must refuse and report.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fleet import Fleet
from support.tls_broker import ProvisionedBroker

from fedge.protocol import signing
from fedge.protocol.manifest import MANIFEST_NAME, SIGNATURE_NAME
from fedge.protocol.privacy import dp_epsilon

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DEVICES = ("dev-a", "dev-b")


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory, digits_federation) -> Iterator[ProvisionedBroker]:
    broker = ProvisionedBroker(tmp_path_factory.mktemp("fleet") / "broker")
    for name, data in zip(DEVICES, digits_federation.device_paths, strict=False):
        broker.add_device(name, "--data", str(data), "--table", digits_federation.table)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def signed_bundle(provisioned: ProvisionedBroker, tmp_path_factory) -> Path:
    from fedge.demo.models import digits_mlp
    from fedge.exporter.export import export_bundle

    return export_bundle(
        digits_mlp(),
        input_shape=(64,),
        out_dir=tmp_path_factory.mktemp("bundles") / "digits",
        optimizer="adamw",
        lr=0.01,
        num_classes=10,
        model_name="digits-mlp",
        sign_key=provisioned.dir.signing_key,
        verify=False,  # checked against torch by the exporter's own tests; saves ~10 s here
    )


def _orchestrator(broker: ProvisionedBroker, bundle: Path, db: Path, **rounds) -> dict:
    cfg = broker.orchestrator_config()  # the generated file: mqtts://, CA, credentials, key
    cfg.update(bundle=str(bundle), database=str(db))
    cfg["rounds"] = {"deadline_seconds": 60, "local_epochs": 1, "batch_size": 16, **rounds}
    return cfg


def _agent(broker: ProvisionedBroker, name: str, state_dir: Path) -> dict:
    cfg = broker.agent_config(name)  # the generated file, with a fresh state dir per test
    cfg["state_dir"] = str(state_dir)
    return cfg


def test_round_over_tls_with_acls_and_dp(
    provisioned: ProvisionedBroker, signed_bundle: Path, tmp_path: Path
) -> None:
    assert provisioned.url.startswith("mqtts://localhost:")
    fleet = Fleet(tmp_path)
    db = tmp_path / "orchestrator.db"
    try:
        for name in DEVICES:
            cfg = _agent(provisioned, name, tmp_path / f"state-{name}")
            assert cfg["mqtt"]["url"] == provisioned.url and cfg["mqtt"]["ca_file"]
            fleet.start(name, "agent", cfg)
        cfg = _orchestrator(
            provisioned,
            signed_bundle,
            db,
            rounds=2,
            min_devices=2,
            min_reports=2,
            clip_norm=5.0,
            noise_multiplier=0.01,
        )
        fleet.start("orchestrator", "orchestrator", cfg)
        assert fleet.wait("orchestrator", timeout=100) == 0, fleet.all_logs()
    finally:
        fleet.stop_all()
    con = sqlite3.connect(db)
    rounds = con.execute("SELECT round, state FROM rounds ORDER BY round").fetchall()
    assert rounds == [(1, "committed"), (2, "committed")], fleet.all_logs()
    accepted = con.execute(
        "SELECT DISTINCT agent_id FROM updates WHERE status='accepted' ORDER BY agent_id"
    ).fetchall()
    assert [a for (a,) in accepted] == list(DEVICES)
    metrics = dict(
        con.execute("SELECT version, metrics FROM model_versions ORDER BY version").fetchall()
    )
    last = json.loads(metrics[2])
    assert last["dp_epsilon"] == pytest.approx(dp_epsilon(0.01, 2))
    broker_log = provisioned.log_path.read_text()
    for name in DEVICES:  # the agents came in through the TLS listener, under their own names
        assert f"as {name} (" in broker_log
    assert not re.search(rf"New connection from \S+ on port {provisioned.plain_port}\b", broker_log)


def _tampered(bundle: Path, out: Path) -> Path:
    """The signed bundle with its model swapped and the manifest re-hashed: old signature."""
    from fedge.protocol.bundle import write_manifest

    shutil.copytree(bundle, out)
    signature = (out / SIGNATURE_NAME).read_bytes()
    model = out / "training_model.onnx"
    model.write_bytes(model.read_bytes() + b"\x00")  # any change to what would run
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    write_manifest(out, manifest)  # consistent hashes, as an attacker would make them
    (out / SIGNATURE_NAME).write_bytes(signature)
    return out


def _signed_by_another_key(bundle: Path, out: Path) -> Path:
    shutil.copytree(bundle, out)
    other_private, _ = signing.generate_keypair()
    signing.sign_bundle(out, other_private)
    return out


@pytest.mark.parametrize("make_bad", [_tampered, _signed_by_another_key])
def test_agent_refuses_an_untrusted_bundle(
    provisioned: ProvisionedBroker, signed_bundle: Path, tmp_path: Path, make_bad
) -> None:
    bad = make_bad(signed_bundle, tmp_path / "bad-bundle")
    fleet = Fleet(tmp_path)
    db = tmp_path / "orchestrator.db"
    try:
        fleet.start("dev-a", "agent", _agent(provisioned, "dev-a", tmp_path / "state"))
        cfg = _orchestrator(provisioned, bad, db, rounds=1, min_devices=1, min_reports=1)
        cfg["trusted_keys"] = []  # a compromised or careless orchestrator serves it anyway
        fleet.start("orchestrator", "orchestrator", cfg)
        deadline = time.monotonic() + 60
        reason = ""
        while time.monotonic() < deadline and not reason:
            time.sleep(0.5)
            try:  # the file can exist a moment before its tables do
                row = (
                    sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                    .execute("SELECT reason FROM devices WHERE agent_id='dev-a'")
                    .fetchone()
                )
            except sqlite3.OperationalError:
                continue
            reason = row[0] if row and "bundle refused" in row[0] else ""
        assert "signature does not verify" in reason, fleet.all_logs()
        aborted = (
            sqlite3.connect(db)
            .execute("SELECT reason FROM updates WHERE agent_id='dev-a' AND status='aborted'")
            .fetchall()
        )
        assert aborted and "bundle refused" in aborted[0][0]
        log = fleet.logs("dev-a")
        assert "bundle refused: signature does not verify" in log, log
        assert "trained" not in log  # nothing ran
    finally:
        fleet.stop_all()

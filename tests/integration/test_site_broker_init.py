"""`fedge broker init --site`: a real Mosquitto accepts the generated site config, and its
bridge logs in to a real central broker (TLS, the site's password from `fedge device add`)
and carries the site's own topics both ways, and nothing of its devices."""

from __future__ import annotations

import os
import time

import pytest
import tomllib
from support.mqtt_peer import Peer
from support.tls_broker import ProvisionedBroker

pytestmark = pytest.mark.integration


def _wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_site_broker_bridges_only_the_sites_topics(tmp_path) -> None:
    central = ProvisionedBroker(tmp_path / "central", federation="central")
    central.add_device("site-a")
    central.add_device("dev-9")  # a central device: must never see the site's devices
    site = ProvisionedBroker(
        tmp_path / "site", federation="central-site-a", site=central.dir.device_dir("site-a")
    )
    site.add_device("dev-0")
    conf = site.dir.mosquitto_conf.read_text()
    assert "connection fedge-site-a" in conf and "remote_username site-a" in conf
    assert os.stat(site.dir.mosquitto_conf).st_mode & 0o077 == 0  # holds a password
    cfg = tomllib.loads(site.dir.site_toml.read_text())
    assert cfg["site"]["id"] == "site-a" and cfg["site"]["federation"] == "central"
    assert cfg["federation"] == "central-site-a"
    peers: list[Peer] = []
    try:
        central.start()
        site.start()
        _wait_for(lambda: "as site-a" in central.log_tail(50), "the bridge to log in")

        def peer(broker: ProvisionedBroker, user: str, password: str) -> Peer:
            p = Peer("localhost", broker.tls_port, user, password, ca_file=str(broker.dir.ca_cert))
            peers.append(p)
            assert not p.wait_connack().is_failure
            return p

        orch = peer(central, "fedge-orchestrator", central.password("fedge-orchestrator"))
        orch.subscribe("fedge/v1/#")
        up = peer(site, "site-a", cfg["site"]["mqtt"]["password"])
        up.subscribe("fedge/v1/central/agent/site-a/cmd")
        dev = peer(site, "dev-0", site.password("dev-0"))
        time.sleep(0.5)  # the bridge's subscriptions on the central broker
        # in: the central orchestrator's command to the site reaches the site aggregator
        orch.publish("fedge/v1/central/agent/site-a/cmd", b"to-site")
        assert up.receive_until(b"to-site")[-1] == ("fedge/v1/central/agent/site-a/cmd", b"to-site")
        # out: a device's message on the site broker stays there; the site's own goes up
        dev.publish("fedge/v1/central-site-a/agent/dev-0/up/msg", b"device-local")
        up.publish("fedge/v1/central/agent/site-a/up/msg", b"site-up")
        seen = orch.receive_until(b"site-up")
        assert ("fedge/v1/central/agent/site-a/up/msg", b"site-up") in seen
        assert all(b"device-local" != payload for _t, payload in seen)
    finally:
        for p in peers:
            p.close()
        site.stop()
        central.stop()

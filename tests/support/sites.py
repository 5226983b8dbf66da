"""Two site brokers bridged to a central one, and the configs of a site federation's processes.

Real Mosquitto x3 on free loopback ports: the central broker (federation ``central``, users =
the orchestrator and the sites, as ``fedge device add`` would make them) and one broker per
site (the site's own federation, its devices, the site aggregator's two logins, and the bridge
rendered by ``write_broker_files(bridge=...)``, i.e. what ``fedge broker init --site`` writes).
"""

from __future__ import annotations

import queue
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedge.orchestrator.broker_files import DEFAULT_ORCHESTRATOR_USER
from fedge.orchestrator.site_bridge import BridgeSettings
from support.mosquitto import MosquittoBroker
from support.mqtt_peer import Peer

ORCH = DEFAULT_ORCHESTRATOR_USER


def _pw() -> str:
    return secrets.token_urlsafe(16)


def allow_sys_bytes(broker: MosquittoBroker) -> None:
    """Let the orchestrator user read ``$SYS/broker/bytes/#`` (the test's byte counter)."""
    acl = broker.files.acl_path
    line = f"topic readwrite {broker.prefix}/#"
    acl.write_text(acl.read_text().replace(line, f"{line}\ntopic read $SYS/broker/bytes/#", 1))


def bytes_received(broker: MosquittoBroker, settle: float = 2.5) -> int:
    """``$SYS/broker/bytes/received`` of a running broker (needs ``allow_sys_bytes``, and
    the orchestrator user's client id free: call it once the orchestrator exited). The
    retained value may be up to one ``sys_interval`` old: the newest of ``settle`` s counts."""
    peer = Peer(broker.host, broker.port, ORCH, broker.users[ORCH])
    values: list[int] = []
    try:
        peer.wait_connack()
        peer.subscribe("$SYS/broker/bytes/received")
        end = time.monotonic() + settle
        while (left := end - time.monotonic()) > 0:
            try:
                values.append(int(peer.messages.get(timeout=left).payload))
            except queue.Empty:
                break
    finally:
        peer.close()
    assert values, "no $SYS/broker/bytes/received"
    return max(values)


@dataclass
class Site:
    name: str  # the site's device id in the central federation
    devices: list[str]
    broker: MosquittoBroker | None = None
    users: dict[str, str] = field(default_factory=dict)

    @property
    def federation(self) -> str:
        return f"{self.name}-local"


def central_broker(workdir: Path, sites: list[Site]) -> MosquittoBroker:
    users = {ORCH: _pw()} | {s.name: _pw() for s in sites}
    broker = MosquittoBroker(workdir, users=users, federation="central", sys_interval=1)
    allow_sys_bytes(broker)
    return broker.start()


def site_broker(workdir: Path, site: Site, central: MosquittoBroker) -> MosquittoBroker:
    site.users = {ORCH: _pw(), site.name: _pw()} | {d: _pw() for d in site.devices}
    bridge = BridgeSettings(
        site_id=site.name,
        central_federation=central.federation,
        central_url=central.url,
        password=central.users[site.name],
    )
    site.broker = MosquittoBroker(
        workdir, users=site.users, federation=site.federation, bridge=bridge
    ).start()
    return site.broker


def site_config(
    site: Site, bundle: Path, database: Path, state_dir: Path, rounds: dict, robust: dict
) -> dict:
    b = site.broker
    assert b is not None
    return {
        "federation": site.federation,
        "bundle": str(bundle),
        "database": str(database),
        "client_id": ORCH,
        "mqtt": {"url": b.url, "username": ORCH, "password": b.users[ORCH], "protocol": "5"},
        "rounds": rounds,
        "robust": robust,
        "site": {
            "id": site.name,
            "federation": "central",
            "state_dir": str(state_dir),
            "offer_retry_seconds": 3.0,
            "mqtt": {
                "url": b.url,
                "username": site.name,
                "password": b.users[site.name],
                "protocol": "5",
            },
        },
    }

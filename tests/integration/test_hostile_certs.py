"""Per-device client certificates (mutual TLS) on a real Mosquitto, from the generated files.

`fedge broker init --mtls-port` adds a listener with ``require_certificate`` and
``use_identity_as_username`` (the certificate's common name is the MQTT user, so the ACL's
``%u`` patterns confine the device) and a CRL; `fedge device add NAME --cert` issues the
certificate; `fedge device revoke NAME` puts it in the CRL and reloads the broker.
"""

from __future__ import annotations

import logging
import os
import pwd
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from support.mosquitto import free_port
from support.mqtt_peer import Peer
from support.tls_broker import ProvisionedBroker, fedge_cli

from fedge.protocol.mqtt_link import MqttLink, MqttSettings
from fedge.provision.layout import BrokerDir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class MutualTlsBroker(ProvisionedBroker):
    """``fedge broker init DIR --mtls-port N`` (the rest as ProvisionedBroker)."""

    def __init__(self, root: Path) -> None:  # noqa: D107 - the parent's, plus --mtls-port
        self.dir = BrokerDir(root)
        self.tls_port, self.plain_port, self.mtls_port = free_port(), free_port(), free_port()
        self.federation = "demo"
        self.log_path = root.parent / f"{root.name}-mosquitto.log"
        self._proc = None
        fedge_cli(
            "broker", "init", str(root), "--host", "localhost", "--federation", "demo",
            "--tls-port", str(self.tls_port), "--plain-port", str(self.plain_port),
            "--mtls-port", str(self.mtls_port), "--bind", "127.0.0.1",
            "--run-as", pwd.getpwuid(os.geteuid()).pw_name,
        )  # fmt: skip


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MutualTlsBroker]:
    b = MutualTlsBroker(tmp_path_factory.mktemp("mtls") / "broker")
    b.add_device("dev-c", "--cert")
    b.add_device("dev-x", "--cert")
    b.add_device("dev-p")  # a password device beside them
    b.start()
    yield b
    b.stop()


def _cert_client(broker: MutualTlsBroker, name: str, *, with_cert: bool = True) -> tuple:
    folder = broker.dir.device_dir(name)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.tls_set(
        ca_certs=str(folder / "ca.crt"),
        certfile=str(folder / "client.crt") if with_cert else None,
        keyfile=str(folder / "client.key") if with_cert else None,
    )
    return _attempt(client, broker.mtls_port)


def _attempt(client: mqtt.Client, port: int) -> str:
    """ "connected", or why not (a TLS error, a refused CONNACK, or no CONNACK at all)."""
    connack: queue.Queue[Any] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, reason, _p: connack.put(reason)
    try:
        client.connect("localhost", port, keepalive=10)
    except OSError as exc:  # ssl.SSLError included
        return f"TLS/connect error: {exc}"
    client.loop_start()
    try:
        reason = connack.get(timeout=3)
    except queue.Empty:
        return "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return f"refused: {reason}" if reason.is_failure else "connected"


def test_generated_files(broker: MutualTlsBroker) -> None:
    cfg = broker.agent_config("dev-c")
    assert cfg["mqtt"]["url"] == f"mqtts://localhost:{broker.mtls_port}"
    assert cfg["mqtt"]["cert_file"].endswith("client.crt") and cfg["mqtt"]["password"] == ""
    conf = broker.dir.mosquitto_conf.read_text()
    assert "require_certificate true" in conf and "use_identity_as_username true" in conf
    assert f"crlfile {broker.dir.crl}" in conf
    assert oct((broker.dir.device_dir("dev-c") / "client.key").stat().st_mode & 0o777) == "0o600"


def test_a_device_with_its_certificate_writes_only_its_own_topics(
    broker: MutualTlsBroker,
) -> None:
    p = broker.prefix
    orch = Peer("localhost", broker.tls_port, "fedge-orchestrator",
                broker.password("fedge-orchestrator"), ca_file=str(broker.dir.ca_cert))  # fmt: skip
    assert not orch.wait_connack().is_failure
    orch.subscribe(f"{p}/#")
    cfg = broker.agent_config("dev-c")["mqtt"]
    link = MqttLink(MqttSettings(**cfg), "dev-c")  # the agent's own link, from agent.toml
    link.start()
    try:
        assert link.wait_connected(5), link.problem
        for topic in (f"{p}/agent/dev-x/up/msg", f"{p}/round/current", f"{p}/agent/dev-c/up/msg"):
            link.publish(topic, topic.encode())
        got = orch.receive_until(f"{p}/agent/dev-c/up/msg".encode())
        assert got == [(f"{p}/agent/dev-c/up/msg", f"{p}/agent/dev-c/up/msg".encode())]
    finally:
        link.stop()
        orch.close()


def test_doctor_checks_tls_and_login_with_the_certificate(broker: MutualTlsBroker) -> None:
    import subprocess
    import sys

    toml = broker.dir.device_dir("dev-c") / "agent.toml"
    out = subprocess.run(
        [sys.executable, "-m", "fedge", "doctor", "--config", str(toml), "--login"],
        capture_output=True, text=True, timeout=60, check=False,
    ).stdout  # fmt: skip
    assert "certificate valid for localhost" in out, out
    assert "logged in as dev-c" in out, out


def test_without_a_certificate_the_listener_refuses(
    broker: MutualTlsBroker, caplog: pytest.LogCaptureFixture
) -> None:
    assert _cert_client(broker, "dev-c") == "connected"
    assert _cert_client(broker, "dev-c", with_cert=False) != "connected"
    cfg = broker.agent_config("dev-c")["mqtt"] | {"cert_file": "", "key_file": ""}
    link = MqttLink(MqttSettings(**cfg), "dev-c")
    with caplog.at_level(logging.INFO):
        link.start()
        time.sleep(1.5)
        link.stop(timeout=0.5)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("client certificate" in e for e in errors), errors
    # nor does a password device's password open it
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-p")
    client.username_pw_set("dev-p", broker.password("dev-p"))
    client.tls_set(ca_certs=str(broker.dir.ca_cert))
    assert _attempt(client, broker.mtls_port) != "connected"


def test_a_revoked_certificate_is_refused(
    broker: MutualTlsBroker, caplog: pytest.LogCaptureFixture
) -> None:
    assert _cert_client(broker, "dev-x") == "connected"
    folder = broker.dir.device_dir("dev-x")
    saved_key = (folder / "client.key").read_bytes()  # a stolen copy of the device's key
    out = fedge_cli("device", "revoke", "dev-x", "--dir", str(broker.dir.root)).stdout
    assert "reloaded the broker" in out, out
    (folder / "client.key").write_bytes(saved_key)
    deadline = time.monotonic() + 5
    while (outcome := _cert_client(broker, "dev-x")) == "connected":
        assert time.monotonic() < deadline, "the revoked certificate still connects\n" + (
            broker.log_tail()
        )
        time.sleep(0.2)  # the reload is asynchronous
    assert "revoked" in outcome or "no CONNACK" in outcome, outcome
    assert _cert_client(broker, "dev-c") == "connected"  # the others still connect
    # the agent's link says why, at ERROR
    cfg = {k: v for k, v in broker.agent_config("dev-c")["mqtt"].items()}
    cfg |= {"cert_file": str(folder / "client.crt"), "key_file": str(folder / "client.key")}
    link = MqttLink(MqttSettings(**cfg), "dev-x")
    with caplog.at_level(logging.INFO):
        link.start()
        time.sleep(1.5)
        link.stop(timeout=0.5)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("revoked" in e for e in errors), errors

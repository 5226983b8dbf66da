"""A broker provisioned by ``fedge broker init`` / ``fedge device add`` enforces who may do what.

Everything runs against a real Mosquitto started with the generated files, over TLS with the
generated CA. Denied QoS 1 publishes are acknowledged and dropped by Mosquitto, so "not
delivered" is proven with a sentinel published afterwards by the same client (one client's
QoS 1 messages arrive in order).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.mqtt_peer import Peer
from support.tls_broker import ProvisionedBroker, fedge_cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WAIT_S = 5.0
DEVICES = ("dev-a", "dev-b", "dev-c")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProvisionedBroker]:
    b = ProvisionedBroker(tmp_path_factory.mktemp("security") / "broker")
    for name in DEVICES:
        b.add_device(name)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def connect(broker: ProvisionedBroker) -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def make(
        user: str | None,
        password: str | None = None,
        *,
        ok: bool = True,
        host: str = "localhost",
    ) -> Peer:
        if user is not None and password is None:
            password = broker.password(user)
        peer = Peer(host, broker.tls_port, user, password, ca_file=str(broker.dir.ca_cert))
        peers.append(peer)
        assert peer.connected.wait(WAIT_S), f"no CONNACK for {user}\n{broker.log_tail()}"
        if ok:
            assert not peer.reason.is_failure, f"{user}: {peer.reason}\n{broker.log_tail()}"
        return peer

    yield make
    for peer in peers:
        peer.close()


def test_generated_config_is_the_hardened_one(broker: ProvisionedBroker) -> None:
    lines = broker.dir.mosquitto_conf.read_text().splitlines()
    for expected in (
        "allow_anonymous false",
        f"password_file {broker.dir.passwd}",
        f"acl_file {broker.dir.acl}",
        "use_username_as_clientid true",
        "persistence true",
        "autosave_interval 10",
        "max_packet_size 2097152",
        f"listener {broker.tls_port} 127.0.0.1",
        f"certfile {broker.dir.broker_cert}",
        f"listener {broker.plain_port} 127.0.0.1",
    ):
        assert expected in lines, expected
    assert "pattern write fedge/v1/demo/agent/%u/up/#" in broker.dir.acl.read_text()


def test_anonymous_is_refused(connect: Callable[..., Peer]) -> None:
    assert connect(None, ok=False).reason.is_failure


def test_wrong_password_is_refused(connect: Callable[..., Peer]) -> None:
    assert connect("dev-a", "not-the-password", ok=False).reason.is_failure


def test_certificate_names_localhost_and_loopback_ip(connect: Callable[..., Peer]) -> None:
    # Both names are in the certificate's SANs: TLS hostname checking passes for each.
    assert not connect("dev-a", host="localhost").reason.is_failure
    assert not connect("dev-b", host="127.0.0.1").reason.is_failure


def test_tls_refuses_a_name_missing_from_the_certificate(broker: ProvisionedBroker) -> None:
    context = ssl.create_default_context(cafile=str(broker.dir.ca_cert))
    with socket.create_connection(("127.0.0.1", broker.tls_port), timeout=WAIT_S) as sock:
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|match"):
            context.wrap_socket(sock, server_hostname="intruder.example")


def test_tls_refuses_a_broker_signed_by_another_ca(
    broker: ProvisionedBroker, tmp_path: Path
) -> None:
    from fedge.provision.certs import make_ca

    other = tmp_path / "other-ca.crt"
    other.write_bytes(make_ca("someone else").cert_pem)
    context = ssl.create_default_context(cafile=str(other))
    with socket.create_connection(("127.0.0.1", broker.tls_port), timeout=WAIT_S) as sock:
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(sock, server_hostname="localhost")


def test_plain_mqtt_to_the_tls_port_gets_no_connack(broker: ProvisionedBroker) -> None:
    user, password = b"dev-a", broker.password("dev-a").encode()
    body = (
        b"\x00\x04MQTT\x04\xc2\x00\x0a"  # MQTT 3.1.1, username+password+clean session
        + b"\x00\x05dev-a"  # client id
        + len(user).to_bytes(2, "big") + user
        + len(password).to_bytes(2, "big") + password
    )  # fmt: skip
    connect_packet = b"\x10" + bytes([len(body)]) + body
    with socket.create_connection(("127.0.0.1", broker.tls_port), timeout=WAIT_S) as sock:
        sock.sendall(connect_packet)
        try:
            reply = sock.recv(16)
        except ConnectionResetError:
            reply = b""
    # The broker expects a TLS ClientHello: it closes the connection (or answers with a TLS
    # alert), never with a CONNACK (0x20).
    assert not reply.startswith(b"\x20"), reply


def test_device_cannot_publish_as_another_device(
    broker: ProvisionedBroker, connect: Callable[..., Peer]
) -> None:
    p = broker.prefix
    orch = connect("fedge-orchestrator")
    orch.subscribe(f"{p}/#")
    dev_a = connect("dev-a")
    dev_a.publish(f"{p}/agent/dev-b/status", b"forged-status")
    dev_a.publish(f"{p}/agent/dev-b/up/msg", b"forged-offer")
    dev_a.publish(f"{p}/agent/dev-b/down", b"forged-chunk")
    dev_a.publish(f"{p}/round/current", b"forged-round")
    dev_a.publish(f"{p}/agent/dev-a/up/msg", b"sentinel")
    assert orch.receive_until(b"sentinel") == [(f"{p}/agent/dev-a/up/msg", b"sentinel")]


def test_device_cannot_read_another_devices_commands(
    broker: ProvisionedBroker, connect: Callable[..., Peer]
) -> None:
    p = broker.prefix
    dev_a = connect("dev-a")
    dev_a.subscribe(f"{p}/agent/dev-b/cmd")
    dev_a.subscribe(f"{p}/agent/dev-b/down")
    dev_a.subscribe(f"{p}/agent/dev-a/cmd")
    dev_b = connect("dev-b")
    dev_b.subscribe(f"{p}/agent/dev-b/cmd")
    orch = connect("fedge-orchestrator")
    orch.publish(f"{p}/agent/dev-b/cmd", b"for-b")
    orch.publish(f"{p}/agent/dev-b/down", b"chunk-for-b")
    orch.publish(f"{p}/agent/dev-a/cmd", b"for-a")
    assert dev_b.receive_until(b"for-b") == [(f"{p}/agent/dev-b/cmd", b"for-b")]
    assert dev_a.receive_until(b"for-a") == [(f"{p}/agent/dev-a/cmd", b"for-a")]


def test_revoked_device_is_refused_after_reload(
    broker: ProvisionedBroker, connect: Callable[..., Peer]
) -> None:
    password = broker.password("dev-c")
    before = connect("dev-c", password)  # accepted while provisioned
    assert before.client.is_connected() and not before.disconnected.is_set()
    out = fedge_cli("device", "revoke", "dev-c", "--dir", str(broker.dir.root)).stdout
    assert f"SIGHUP to PID {broker.pid}" in out
    assert not (broker.dir.device_dir("dev-c") / "agent.toml").exists()
    deadline = time.monotonic() + WAIT_S
    while True:  # the reload is asynchronous: retry until the broker refuses the login
        peer = connect("dev-c", password, ok=False)
        if peer.reason.is_failure or time.monotonic() > deadline:
            break
        peer.close()
        time.sleep(0.1)
    assert peer.reason.is_failure, f"dev-c still accepted after revoke\n{broker.log_tail()}"
    # Mosquitto 2.x re-checks connected clients on reload: the revoked session is dropped too.
    assert before.disconnected.wait(WAIT_S), "the revoked device's open connection survived"
    listing = fedge_cli("device", "list", "--dir", str(broker.dir.root)).stdout
    assert "dev-c\trevoked" in listing and "dev-a\tactive" in listing

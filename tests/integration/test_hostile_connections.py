"""A device with broken credentials, or two processes sharing one device's credentials.

Real Mosquitto brokers. Every TLS and login failure is logged at ERROR with its reason (paho
reports a failed TLS connect only through ``on_connect_fail``), and two links using one
device's credentials notice the session takeover and back off instead of taking the session
from each other in a tight loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.tls_broker import ProvisionedBroker

from fedge.protocol.mqtt_link import MqttLink, MqttSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProvisionedBroker]:
    broker = ProvisionedBroker(tmp_path_factory.mktemp("hostile-tls") / "broker")
    broker.add_device("dev-a")
    broker.start()
    yield broker
    broker.stop()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _run(link: MqttLink, seconds: float) -> None:
    link.start()
    try:
        time.sleep(seconds)
    finally:
        link.stop(timeout=0.5)


def test_unknown_ca_is_logged_at_error(
    tls_broker: ProvisionedBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fedge.provision.certs import make_ca

    other = tmp_path / "other-ca.crt"
    other.write_bytes(make_ca("someone else").cert_pem)
    settings = MqttSettings(
        url=tls_broker.url,
        username="dev-a",
        password=tls_broker.password("dev-a"),
        ca_file=str(other),
    )
    link = MqttLink(settings, "dev-a")
    with caplog.at_level(logging.INFO):
        _run(link, 1.5)
    errors = _errors(caplog)
    assert any("certificate not accepted" in e and "ca_file" in e for e in errors), errors
    assert "certificate" in link.problem


def test_bad_password_is_logged_at_error(
    tls_broker: ProvisionedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    settings = MqttSettings(
        url=tls_broker.url,
        username="dev-a",
        password="not-the-password",
        ca_file=str(tls_broker.dir.ca_cert),
    )
    link = MqttLink(settings, "dev-a")
    with caplog.at_level(logging.INFO):
        _run(link, 1.5)
    errors = _errors(caplog)
    assert any("refused dev-a" in e and "password" in e for e in errors), errors
    assert "refused dev-a" in link.problem


def test_unknown_user_is_logged_at_error(
    tls_broker: ProvisionedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    settings = MqttSettings(
        url=tls_broker.url,
        username="dev-unknown",
        password="whatever",
        ca_file=str(tls_broker.dir.ca_cert),
        protocol="3.1.1",
    )
    with caplog.at_level(logging.INFO):
        _run(MqttLink(settings, "dev-unknown"), 1.5)
    assert any("refused dev-unknown" in e for e in _errors(caplog)), _errors(caplog)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_two_links_with_one_devices_credentials_back_off(
    mosquitto, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = MqttSettings(
        url=mosquitto.url,
        username="dev-0",
        password=mosquitto.users["dev-0"],
        protocol=protocol,
    )
    links = [MqttLink(settings, "dev-0"), MqttLink(settings, "dev-0")]
    window = 14.0
    with caplog.at_level(logging.INFO):
        for link in links:
            link.start()
            time.sleep(0.3)
        time.sleep(window)
        for link in links:
            link.stop(timeout=0.5)
    connects = [r for r in caplog.records if r.getMessage().startswith("connected to")]
    takeovers = [e for e in _errors(caplog) if "another process is using device dev-0" in e]
    # Before: the two links took the session from each other 9 times in 14 s, silently.
    assert takeovers, "the takeover was never reported at ERROR"
    assert len(connects) <= 7, f"{len(connects)} connects in {window:.0f} s: a tight loop"
    assert any("another process" in link.problem for link in links)


def _tls_broker(tmp_path: Path, *, hosts: list[str], expired: bool) -> tuple[Any, int, Path]:
    """Mosquitto on the generated files with a TLS listener whose certificate is ours."""
    import datetime as dt
    import os
    import pwd
    import subprocess

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from support.mosquitto import find_mosquitto, free_port

    from fedge.orchestrator.broker_files import TlsSettings, write_broker_files
    from fedge.provision.certs import KeyAndCert, make_ca, make_server_cert, write_pem

    ca = make_ca("test CA")
    server = make_server_cert(ca, hosts)
    if expired:  # the same certificate, valid only until yesterday
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(server.cert.subject)
            .issuer_name(ca.cert.subject)
            .public_key(server.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now - dt.timedelta(days=1))
            .add_extension(
                server.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
                critical=False,
            )  # fmt: skip
            .sign(ca.key, hashes.SHA256())
        )
        server = KeyAndCert(server.key, cert)
    write_pem(ca, tmp_path / "ca.crt", tmp_path / "ca.key")
    write_pem(server, tmp_path / "server.crt", tmp_path / "server.key")
    tls_port = free_port()
    files = write_broker_files(
        tmp_path / "broker",
        port=free_port(),
        users={"fedge-orchestrator": "pw-orch", "dev-0": "pw-0"},
        tls=TlsSettings(
            tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key", port=tls_port
        ),  # fmt: skip
        persistence=False,
        run_as_user=pwd.getpwuid(os.geteuid()).pw_name,
    )
    proc = subprocess.Popen(
        [find_mosquitto(), "-c", str(files.conf_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", tls_port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, tls_port, tmp_path / "ca.crt"


@pytest.mark.parametrize(
    ("hosts", "url_host", "expired", "wanted"),
    [
        (["broker.example"], "127.0.0.1", False, "mismatch"),
        (["localhost", "127.0.0.1"], "127.0.0.1", True, "expired"),
    ],
)
def test_wrong_host_name_and_expired_certificate_are_logged_at_error(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    hosts: list[str],
    url_host: str,
    expired: bool,
    wanted: str,
) -> None:
    proc, port, ca_file = _tls_broker(tmp_path, hosts=hosts, expired=expired)
    try:
        settings = MqttSettings(
            url=f"mqtts://{url_host}:{port}", username="dev-0", password="pw-0",
            ca_file=str(ca_file),
        )  # fmt: skip
        link = MqttLink(settings, "dev-0")
        with caplog.at_level(logging.INFO):
            _run(link, 1.5)
    finally:
        proc.terminate()
        proc.wait(5)
    errors = _errors(caplog)
    assert any(wanted in e.lower() and "tls" in e.lower() for e in errors), errors

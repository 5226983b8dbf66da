"""fedge.provision: certificates, broker directories, device credentials, doctor (no broker)."""

from __future__ import annotations

import ipaddress
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedge.agent.config import AgentConfig
from fedge.cli import build_parser
from fedge.orchestrator.broker_files import password_file_users
from fedge.orchestrator.config import OrchestratorConfig
from fedge.protocol.errors import ConfigError
from fedge.protocol.settings import load_settings
from fedge.provision.broker_init import init_broker
from fedge.provision.certs import cert_hosts, make_ca, make_server_cert
from fedge.provision.devices import add_device, list_devices, revoke_device
from fedge.provision.doctor import FAIL, OK, check_broker


def test_server_cert_has_sans_and_chains_to_the_ca() -> None:
    ca = make_ca("test CA")
    server = make_server_cert(ca, ["broker.lan", "localhost", "127.0.0.1", "::1"])
    assert cert_hosts(server.cert) == ["broker.lan", "localhost", "127.0.0.1", "::1"]
    san = server.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    # signed by the CA's key; the CA may sign, the server may not
    ca.key.public_key().verify(
        server.cert.signature,
        server.cert.tbs_certificate_bytes,
        ec.ECDSA(server.cert.signature_hash_algorithm),
    )
    assert server.cert.issuer == ca.cert.subject
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("bad", [[], ["has space"], ["a/b"]])
def test_bad_host_names_are_config_errors(bad: list[str]) -> None:
    with pytest.raises(ConfigError):
        make_server_cert(make_ca(), bad)


@pytest.fixture
def broker_dir(tmp_path: Path):
    return init_broker(
        tmp_path / "broker", hosts=["broker.lan"], federation="farm", tls_port=18883,
        plain_port=11883, run_as_user="nobody",
    )  # fmt: skip


def test_broker_init_writes_a_complete_private_layout(broker_dir) -> None:
    d = broker_dir
    for path in (d.ca_cert, d.broker_cert, d.signing_pub, d.mosquitto_conf, d.acl, d.passwd):
        assert path.is_file(), path
    for secret in (d.ca_key, d.broker_key, d.signing_key, d.passwd, d.orchestrator_toml):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    record = d.load_record()
    assert record.hosts == ["broker.lan", "localhost", "127.0.0.1"]
    assert record.url == "mqtts://broker.lan:18883"
    assert cert_hosts(x509.load_pem_x509_certificate(d.broker_cert.read_bytes())) == record.hosts
    conf = d.mosquitto_conf.read_text().splitlines()
    assert "allow_anonymous false" in conf and "listener 18883 0.0.0.0" in conf
    assert "listener 11883 127.0.0.1" in conf  # the plain listener never leaves loopback
    assert f"pid_file {d.pid_file}" in conf and "user nobody" in conf
    assert "fedge/v1/farm/agent/%u/up/#" in d.acl.read_text()
    assert password_file_users(d.passwd) == ["fedge-orchestrator"]
    orch = load_settings(OrchestratorConfig, d.orchestrator_toml)
    assert orch.federation == "farm" and orch.trusted_keys == [str(d.signing_pub)]
    assert orch.mqtt.url == "mqtts://localhost:18883" and orch.mqtt.ca_file == str(d.ca_cert)
    assert len(orch.mqtt.password) >= 24


def test_broker_init_never_overwrites(broker_dir) -> None:
    with pytest.raises(ConfigError, match="already a broker directory"):
        init_broker(broker_dir.root, hosts=["x"])


def test_device_add_writes_a_ready_agent_config(broker_dir) -> None:
    files = add_device(broker_dir.root, "pi-1", install_dir="/etc/fedge", data_path="/d.db")
    cfg = load_settings(AgentConfig, files.agent_toml)
    assert (cfg.id, cfg.federation, cfg.mqtt.username) == ("pi-1", "farm", "pi-1")
    assert cfg.mqtt.url == "mqtts://broker.lan:18883"
    assert cfg.mqtt.ca_file == "/etc/fedge/ca.crt" and cfg.trusted_keys == [
        "/etc/fedge/signing.pub"
    ]
    assert cfg.state_dir == "/etc/fedge/state" and cfg.data.path == "/d.db"
    assert files.ca_cert.read_bytes() == broker_dir.ca_cert.read_bytes()
    assert files.signing_pub.read_bytes() == broker_dir.signing_pub.read_bytes()
    assert stat.S_IMODE(files.agent_toml.stat().st_mode) == 0o600
    assert password_file_users(broker_dir.passwd) == ["fedge-orchestrator", "pi-1"]
    assert cfg.mqtt.password not in broker_dir.passwd.read_text()  # hashed
    with pytest.raises(ConfigError, match="already exists"):
        add_device(broker_dir.root, "pi-1")
    with pytest.raises(ConfigError, match="orchestrator"):
        add_device(broker_dir.root, "fedge-orchestrator")
    with pytest.raises(ConfigError, match="invalid device name"):
        add_device(broker_dir.root, "a/#")


def test_revoke_removes_the_credential_and_allows_a_fresh_add(broker_dir) -> None:
    add_device(broker_dir.root, "pi-1")
    add_device(broker_dir.root, "pi-2")
    assert revoke_device(broker_dir.root, "pi-1") is True
    assert password_file_users(broker_dir.passwd) == ["fedge-orchestrator", "pi-2"]
    assert not (broker_dir.device_dir("pi-1") / "agent.toml").exists()
    assert list_devices(broker_dir.root) == {"pi-1": "revoked", "pi-2": "active"}
    assert revoke_device(broker_dir.root, "pi-1") is False
    add_device(broker_dir.root, "pi-1")  # re-enrol with a new password
    assert list_devices(broker_dir.root)["pi-1"] == "active"


def test_not_a_broker_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fedge broker init"):
        add_device(tmp_path, "pi-1")


def test_doctor_reports_an_unreachable_broker_with_a_fix(broker_dir, tmp_path: Path) -> None:
    files = add_device(broker_dir.root, "pi-1", data_path=str(tmp_path / "missing.db"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = files.agent_toml.read_text().replace(
        "mqtts://broker.lan:18883", f"mqtts://127.0.0.1:{port}"
    )
    files.agent_toml.write_text(text)
    # In a child process: the backend check imports ONNX Runtime, which blocks torch.
    result = subprocess.run(
        [sys.executable, "-m", "fedge", "doctor", "--config", str(files.agent_toml)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = result.stdout
    assert result.returncode == 1, result.stderr
    assert "fedge doctor (agent)" in report
    assert re.search(r"ok +python", report) and re.search(r"ok +ca file", report)
    assert re.search(r"FAIL +data .*missing.db", report) and "fix: set data.path" in report
    assert "FAIL  broker" in report and "fix: start the broker" in report


def test_doctor_flags_a_plain_listener_speaking_no_tls() -> None:
    with socket.socket() as server:  # a TCP server that accepts and closes: no TLS handshake
        server.bind(("127.0.0.1", 0))
        server.listen()
        from fedge.protocol.mqtt_link import MqttSettings

        settings = MqttSettings(url=f"mqtts://127.0.0.1:{server.getsockname()[1]}")
        import threading

        threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
        checks = check_broker(settings, "x", timeout=2)
    assert [c.status for c in checks] == [OK, FAIL]
    assert "TLS" in checks[1].detail


@pytest.mark.parametrize(
    "argv",
    [["broker", "init"], ["device", "add"], ["device", "revoke"], ["device", "list"], ["doctor"]],
)
def test_every_command_has_an_example(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    assert "Example:" in capsys.readouterr().out


def test_reload_never_signals_a_process_that_is_not_mosquitto(broker_dir) -> None:
    import os

    from fedge.provision.devices import reload_broker

    broker_dir.pid_file.write_text(f"{os.getpid()}\n")  # e.g. a container's PID 1 on the host
    assert reload_broker(broker_dir.root) is None
    broker_dir.pid_file.write_text("not a pid\n")
    assert reload_broker(broker_dir.root) is None

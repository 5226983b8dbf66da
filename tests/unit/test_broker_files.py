"""orchestrator.broker_files: rendered Mosquitto config, ACL and password file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedge.orchestrator.broker_files import (
    TlsSettings,
    render_acl,
    render_config,
    write_broker_files,
)
from fedge.protocol.errors import ConfigError


def test_acl_has_device_patterns_and_orchestrator_prefix() -> None:
    acl = render_acl(federation="farm", orchestrator_user="orch")
    lines = [line for line in acl.splitlines() if line and not line.startswith("#")]
    p = "fedge/v1/farm"
    assert lines == [
        f"pattern write {p}/agent/%u/status",
        f"pattern read {p}/agent/%u/status",
        f"pattern write {p}/agent/%u/up/#",
        f"pattern read {p}/agent/%u/cmd",
        f"pattern read {p}/agent/%u/down",
        f"pattern read {p}/agent/%u/invite",
        f"pattern read {p}/round/#",
        f"pattern read {p}/orchestrator/#",
        "user orch",
        f"topic readwrite {p}/#",
    ]


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "x#", "two words"])
def test_acl_rejects_names_that_would_widen_topics(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid federation"):
        render_acl(federation=bad)


def test_config_has_the_hardening_options(tmp_path: Path) -> None:
    conf = render_config(
        port=18830,
        passwd_path=tmp_path / "passwd",
        acl_path=tmp_path / "acl",
        persistence_dir=tmp_path / "data",
        tls=TlsSettings(cafile="ca.pem", certfile="srv.pem", keyfile="srv.key", port=18831),
    )
    lines = conf.splitlines()
    for expected in [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {tmp_path / 'passwd'}",
        f"acl_file {tmp_path / 'acl'}",
        "persistence true",
        f"persistence_location {tmp_path / 'data'}/",
        "autosave_interval 10",
        "max_packet_size 2097152",
        "log_dest stderr",
        "listener 18830 127.0.0.1",
        "listener 18831 127.0.0.1",
        "require_certificate false",
    ]:
        assert expected in lines, expected
    assert f"cafile {Path('ca.pem').resolve()}" in lines
    # use_username_as_clientid is a listener option: it must follow each listener line.
    first_listener = lines.index("listener 18830 127.0.0.1")
    positions = [i for i, line in enumerate(lines) if line == "use_username_as_clientid true"]
    assert len(positions) == 2 and min(positions) > first_listener


def test_config_rejects_same_tls_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TLS port"):
        render_config(
            port=1883,
            passwd_path=tmp_path / "p",
            acl_path=tmp_path / "a",
            persistence_dir=tmp_path,
            tls=TlsSettings(cafile="c", certfile="c", keyfile="k", port=1883),
        )


def test_write_broker_files_hashes_passwords(tmp_path: Path) -> None:
    files = write_broker_files(
        tmp_path / "broker", port=18830, users={"fedge-orchestrator": "s3cret", "dev-0": "pw0"}
    )
    assert files.conf_path.read_text().startswith("# fedge broker configuration")
    assert "user fedge-orchestrator" in files.acl_path.read_text()
    passwd = files.passwd_path.read_text()
    assert passwd.startswith("fedge-orchestrator:$") and "\ndev-0:$" in passwd
    assert "s3cret" not in passwd and "pw0" not in passwd
    assert files.persistence_dir.is_dir()
    assert files.passwd_path.stat().st_mode & 0o077 == 0


def test_missing_mosquitto_passwd_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ConfigError, match=r"mosquitto_passwd not found: install mosquitto"):
        write_broker_files(tmp_path / "broker", port=18830, users={"dev-0": "pw"})


def test_bad_password_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dev-0"):
        write_broker_files(tmp_path, port=18830, users={"dev-0": ""})


def test_a_password_file_for_many_devices_is_hashed_by_one_process(tmp_path, monkeypatch) -> None:
    """10,000 devices took one mosquitto_passwd process each, each rewriting the whole file."""
    import subprocess

    from fedge.orchestrator.broker_files import write_password_file

    calls = []
    real = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    users = {f"dev-{i}": f"secret-{i}" for i in range(300)}
    path = write_password_file(tmp_path / "passwd", users)
    lines = path.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == list(users)
    assert all(line.split(":", 1)[1].startswith("$") for line in lines)  # hashed, none plain
    assert len(calls) == 1 and not any("secret" in str(arg) for arg in calls[0])
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="must not contain ':'"):
        write_password_file(tmp_path / "p2", {"dev-0": "a:b"})


def test_site_bridge_carries_only_the_sites_own_topics() -> None:
    from fedge.orchestrator.site_bridge import BridgeSettings, render_bridge, render_site_acl

    text = render_bridge(BridgeSettings("site-a", "farm", "mqtt://central.lan:1883", "pw"))
    topics = [line for line in text.splitlines() if line.startswith("topic ")]
    me = "fedge/v1/farm/agent/site-a"
    assert topics == [
        f"topic {me}/status out 1",
        f"topic {me}/up/# out 1",
        f"topic {me}/cmd in 1",
        f"topic {me}/down in 1",
        f"topic {me}/invite in 1",
        "topic fedge/v1/farm/round/# in 1",
        "topic fedge/v1/farm/orchestrator/# in 1",
    ]
    assert "address central.lan:1883" in text and "remote_username site-a" in text
    assert "user site-a" in render_site_acl("site-a", "farm")
    with pytest.raises(ConfigError, match="central CA"):
        render_bridge(BridgeSettings("site-a", "farm", "mqtts://central.lan:8883", "pw"))
    with pytest.raises(ConfigError, match="not mqtt://"):
        render_bridge(BridgeSettings("site-a", "farm", "http://central.lan", "pw"))

"""``fedge device add`` / ``revoke`` / ``list``: device credentials in a broker directory.

A device's MQTT username is its id; the ACL's ``%u`` patterns already confine every user to
its own topics, so adding a device is a password entry plus a ready ``agent.toml`` (with the
broker's ``mqtts://`` URL, the CA file and the trusted signing key) in ``devices/NAME/``.
Revoking deletes the password entry; Mosquitto reads the password file again on SIGHUP.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

from fedge.agent.config import AgentConfig
from fedge.agent.eligibility import EligibilitySettings
from fedge.orchestrator.broker_files import delete_password, password_file_users, set_password
from fedge.protocol.errors import ConfigError, MessageError
from fedge.protocol.sqlite_samples import DataSource
from fedge.protocol.toml_writer import Commented, render_toml
from fedge.protocol.topics import validate_name

from .certs import crl_serials, load_cert, load_pair, make_client_cert, make_crl, write_pem
from .layout import BrokerDir, write_secret

log = logging.getLogger(__name__)

DEFAULT_DATA_PATH = "/var/lib/fedge/data.db"
CLIENT_CERT_NAME = "client.crt"
CLIENT_KEY_NAME = "client.key"

AGENT_COMMENTS = {
    "state_dir": "the agent's own SQLite state: outbox, round journal, cached bundles",
    "trusted_keys": "only bundles signed by one of these keys are trained",
    "validation_fraction": "Share of the device's rows held back from training in every round to\n"
    "measure the model (val_loss, val_accuracy). 0.1 = a tenth of the rows; 0 = train on\n"
    "all rows (no validation metrics). Devices with fewer than 10 rows use all of them.",
    "data": "The device's training rows: a read-only SQLite file. Every key with examples:\n"
    "docs/data.md. Check what the agent will read: fedge data check --config agent.toml",
    "data.table": "the table (or view) to read; ignored when query is set",
    "data.features": 'feature columns: names or globs ("f*" = f0, f1, ... f10 in natural order)',
    "data.label": "the label column (class index, 0/1, or a number for regression)",
    "data.where": "an SQL filter on the rows",
    "data.query": "a full SELECT instead of table (it must return the features and the label)",
    "data.blob_column": "features from one BLOB column instead (set blob_dtype, blob_shape)",
    "data.feature_scale": "multiply every feature, e.g. 1/255 for uint8 pixels",
    "eligibility": "When this device may train. 0 or empty switches a rule off (all off here).\n"
    'Example: max_load_per_cpu = 0.5, idle_minutes = 10, windows = ["22:00-06:00"]',
    "eligibility.max_load_per_cpu": "1-minute load average / CPU count must stay below this ...",
    "eligibility.idle_minutes": "... for this many minutes before training starts",
    "eligibility.min_battery_percent": "on battery: train only above this charge",
    "eligibility.require_ac": "never train on battery",
    "eligibility.max_temperature_c": "hottest sensor (Raspberry Pi: thermal_zone0)",
    "eligibility.windows": 'local time windows, e.g. ["22:00-06:00"] (may wrap midnight)',
    "eligibility.max_minutes_per_day": "training time budget per local day",
    "eligibility.override_file": "JSON readings replacing the real ones (tests, simulation)",
    "eligibility.check_seconds": "how often an idle agent re-checks and reports a change",
}


@dataclass(frozen=True)
class DeviceFiles:
    """What ``add_device`` wrote: the folder to copy to the device and its config."""

    folder: Path
    agent_toml: Path
    ca_cert: Path
    signing_pub: Path


def add_device(
    root: str | Path,
    name: str,
    *,
    install_dir: str | None = None,
    data_path: str = DEFAULT_DATA_PATH,
    data_table: str = "samples",
    state_dir: str | None = None,
    cert: bool = False,
) -> DeviceFiles:
    """Create credentials for device ``name`` and write ``devices/NAME/`` for it.

    ``install_dir`` is where the folder will live on the device (paths in agent.toml point
    there); by default the folder itself, which is right when the agent runs on this machine.
    ``cert``: a client certificate from the broker's CA instead of a password; the device
    connects to the mutual-TLS listener (``fedge broker init --mtls-port``).
    """
    _check_name(name)
    d = BrokerDir(root)
    record = d.load_record()
    if name == record.orchestrator_user:
        raise ConfigError(f"'{name}' is the orchestrator's user name; choose another device name")
    if name in password_file_users(d.passwd) or name in record.cert_devices:
        raise ConfigError(
            f"device '{name}' already exists; revoke it first (fedge device revoke {name})"
        )
    if cert and not record.mtls_port:
        raise ConfigError(
            f"{d.root} has no mutual-TLS listener for client certificates; "
            "create the broker directory with `fedge broker init ... --mtls-port 8884`"
        )
    folder = d.device_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    files = DeviceFiles(folder, folder / "agent.toml", folder / "ca.crt", folder / "signing.pub")
    shutil.copyfile(d.ca_cert, files.ca_cert)
    shutil.copyfile(d.signing_pub, files.signing_pub)
    there = Path(install_dir) if install_dir else folder
    if cert:
        _issue_client_cert(d, name, folder)
        url, password = record.mtls_url, ""
        tls_files = {
            "cert_file": str(there / CLIENT_CERT_NAME),
            "key_file": str(there / CLIENT_KEY_NAME),
        }
    else:
        url, password, tls_files = record.url, secrets.token_urlsafe(24), {}
        set_password(d.passwd, name, password)
    header = (
        f"fedge agent '{name}' of federation '{record.federation}' (written by fedge device add).\n"
        f"Copy {folder.name}/ to {there} on the device; it holds the device's broker password.\n"
        "Point data.path at the device's SQLite file, then: fedge doctor --config agent.toml"
    )
    text = render_toml(
        {
            "id": name,
            "federation": record.federation,
            "state_dir": state_dir or str(there / "state"),
            "trusted_keys": [str(there / "signing.pub")],
            "validation_fraction": AgentConfig().validation_fraction,
            "mqtt": {
                "url": url,
                "username": name,
                "password": password,
                "ca_file": str(there / "ca.crt"),
                **tls_files,
            },
            "data": {
                "path": data_path,
                "table": data_table,
                "features": DataSource(path="").features,
                "label": DataSource(path="").label,
                "where": Commented("created_at > datetime('now', '-30 days')"),
                "query": Commented("SELECT f0, f1, f2, label FROM readings JOIN ..."),
                "blob_column": Commented("pixels"),
                "feature_scale": Commented(0.003921569),
            },
            "eligibility": asdict(EligibilitySettings()),
        },
        header=header,
        comments=AGENT_COMMENTS,
    )
    write_secret(files.agent_toml, text)
    if name not in record.devices:
        record.devices.append(name)
    if cert:
        record.cert_devices.append(name)
    if name in record.revoked:
        record.revoked.remove(name)
    d.save_record(record)
    log.info("device %s added; its files are in %s", name, folder)
    return files


def revoke_device(root: str | Path, name: str) -> bool:
    """Delete ``name``'s password entry and its folder's secret; False if it was not present.

    A device with a client certificate has its certificate added to the CRL. The broker
    refuses the device after it reloads (password file, ACL, CRL): see ``reload_broker``.
    """
    _check_name(name)
    d = BrokerDir(root)
    record = d.load_record()
    if name == record.orchestrator_user:
        raise ConfigError("refusing to revoke the orchestrator's user")
    removed = delete_password(d.passwd, name)
    if name in record.cert_devices:
        _revoke_client_cert(d, name)
        record.cert_devices.remove(name)
        removed = True
    toml = d.device_dir(name) / "agent.toml"
    if toml.exists():
        toml.unlink()  # it holds the password that no longer works
    if name in record.devices:
        record.devices.remove(name)
    if removed and name not in record.revoked:
        record.revoked.append(name)
    d.save_record(record)
    log.info("device %s revoked (password entry %s)", name, "removed" if removed else "absent")
    return removed


def list_devices(root: str | Path) -> dict[str, str]:
    """Map every known device to ``active`` or ``revoked``."""
    d = BrokerDir(root)
    record = d.load_record()
    users = set(password_file_users(d.passwd))
    users |= set(record.cert_devices)
    out = {n: "active" if n in users else "missing from passwd" for n in record.devices}
    out.update({n: "revoked" for n in record.revoked})
    return out


def reload_broker(root: str | Path) -> int | None:
    """Send SIGHUP to the broker whose PID is in ``mosquitto/mosquitto.pid``; its PID or None.

    Mosquitto re-reads its password file and ACL on SIGHUP (under systemd:
    ``systemctl reload mosquitto``).
    """
    pid_file = BrokerDir(root).pid_file
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if not _is_mosquitto(pid):  # a stale file, or a container's PID: never signal a stranger
        log.info("PID %d from %s is not a running mosquitto; not reloading", pid, pid_file)
        return None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        log.info("no broker with PID %d (stale %s)", pid, pid_file)
        return None
    return pid


def _issue_client_cert(d: BrokerDir, name: str, folder: Path) -> None:
    """Write ``client.crt`` / ``client.key`` (0600) for ``name`` into its folder."""
    ca = load_pair(d.ca_cert, d.ca_key)
    for old in (folder / CLIENT_CERT_NAME, folder / CLIENT_KEY_NAME):
        old.unlink(missing_ok=True)  # a device added again after a revoke
    write_pem(make_client_cert(ca, name), folder / CLIENT_CERT_NAME, folder / CLIENT_KEY_NAME)


def _revoke_client_cert(d: BrokerDir, name: str) -> None:
    """Add the device's certificate to the broker's CRL and delete its private key."""
    cert_path = d.device_dir(name) / CLIENT_CERT_NAME
    ca = load_pair(d.ca_cert, d.ca_key)
    serials = crl_serials(d.crl.read_bytes()) if d.crl.exists() else []
    serials.append(load_cert(cert_path).serial_number)
    tmp = d.crl.with_suffix(".tmp")
    tmp.write_bytes(make_crl(ca, serials))
    if d.crl.exists() and os.geteuid() == 0:  # keep it readable by the broker's user
        st = d.crl.stat()
        os.chown(tmp, st.st_uid, st.st_gid)
    tmp.replace(d.crl)
    (d.device_dir(name) / CLIENT_KEY_NAME).unlink(missing_ok=True)
    log.info("certificate %x of %s added to %s", serials[-1], name, d.crl)


def _check_name(name: str) -> None:
    try:
        validate_name(name, "device name")
    except MessageError as exc:
        raise ConfigError(str(exc)) from None


def _is_mosquitto(pid: int) -> bool:
    """True if ``pid`` runs the mosquitto binary (Linux /proc; elsewhere: never assume)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm == "mosquitto"

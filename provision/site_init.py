"""``fedge broker init DIR --site DEVICE_FOLDER``: a site broker bridged to the central one.

``DEVICE_FOLDER`` is what ``fedge device add SITE --dir CENTRAL_DIR`` wrote on the central
broker host for the site (agent.toml with the site's central password, ca.crt, signing.pub):
copied to the site host, it gives the site's bridge its login, the central CA for TLS and the
key the central bundles are signed with. The site directory then holds the usual broker files
plus the bridge (``connection`` and ``topic ... in|out`` lines), and ``site.toml`` for
``fedge orchestrator --role site`` instead of ``orchestrator.toml``.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from fedge.orchestrator.config import RoundSettings
from fedge.orchestrator.site_bridge import BridgeSettings
from fedge.protocol.errors import ConfigError
from fedge.protocol.toml_writer import render_toml

from .layout import BrokerDir, BrokerRecord

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class CentralLogin:
    """The site's identity at the central broker, read from its ``fedge device add`` folder."""

    site_id: str
    federation: str
    url: str
    password: str
    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def signing_pub(self) -> Path:
        return self.folder / "signing.pub"

    def bridge(self, ca_file: Path) -> BridgeSettings:
        return BridgeSettings(
            site_id=self.site_id,
            central_federation=self.federation,
            central_url=self.url,
            password=self.password,
            ca_file=str(ca_file) if self.url.startswith("mqtts://") else "",
        )


def read_central_login(folder: str | Path) -> CentralLogin:
    """Read the site's device folder; a clear error when it is not one."""
    folder = Path(folder).resolve()
    toml = folder / "agent.toml"
    try:
        data = tomllib.loads(toml.read_text())
        mqtt = data["mqtt"]
        login = CentralLogin(
            str(data["id"]),
            str(data["federation"]),
            str(mqtt["url"]),
            str(mqtt.get("password", "")),
            folder,
        )
    except FileNotFoundError:
        raise ConfigError(
            f"--site {folder}: no agent.toml there; pass the folder `fedge device add SITE "
            "--dir CENTRAL_DIR` wrote on the central broker host"
        ) from None
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"--site {toml} is not an agent.toml of fedge device add: {exc}") from exc
    if not login.password:
        raise ConfigError(
            f"--site {folder}: the site '{login.site_id}' has no password (a client certificate?); "
            "a bridge logs in with a password: add the site without --cert"
        )
    needed = [login.signing_pub] + ([login.ca_cert] if login.url.startswith("mqtts://") else [])
    for path in needed:
        if not path.is_file():
            raise ConfigError(f"--site {folder}: {path.name} is missing")
    return login


def install_central_files(login: CentralLogin, d: BrokerDir) -> tuple[Path, Path]:
    """Copy the central CA and signing key into the site directory; bundles are signed
    centrally, so the site's devices trust the central key (the site's own is removed)."""
    central = d.root / "central"
    central.mkdir(exist_ok=True)
    ca = central / "ca.crt"
    if login.ca_cert.is_file():
        shutil.copyfile(login.ca_cert, ca)
    shutil.copyfile(login.signing_pub, d.signing_pub)
    d.signing_key.unlink(missing_ok=True)
    return ca, d.signing_pub


def site_toml(
    d: BrokerDir, record: BrokerRecord, login: CentralLogin, orch_password: str, site_password: str
) -> str:
    """The site aggregator's config: its devices' orchestrator and its face upstream."""
    host = "localhost" if "localhost" in record.hosts else record.hosts[0]
    url = f"mqtts://{host}:{record.tls_port}"
    rs = RoundSettings()
    header = (
        f"fedge site aggregator '{login.site_id}' of central federation '{login.federation}'\n"
        f"(written by fedge broker init --site). Its devices are federation '{record.federation}'\n"
        "on this site broker; the bridge in mosquitto.conf carries the site's own topics to the\n"
        f"central broker {login.url}. Holds two broker passwords: keep it mode 0600.\n"
        f"Copy the central bundle to {d.root / 'bundle.fedge'}, then:\n"
        "  fedge orchestrator --role site --config site.toml"
    )
    return render_toml(
        {
            "federation": record.federation,
            "client_id": record.orchestrator_user,
            "bundle": str(d.root / "bundle.fedge"),
            "database": str(d.orchestrator_dir / "site.db"),
            "trusted_keys": [str(d.signing_pub)],
            "exit_when_done": False,
            "mqtt": {
                "url": url,
                "username": record.orchestrator_user,
                "password": orch_password,
                "ca_file": str(d.ca_cert),
            },
            "rounds": {
                "min_devices": rs.min_devices,
                "min_reports": rs.min_reports,
                "devices_per_round": rs.devices_per_round,
                "deadline_seconds": rs.deadline_seconds,
            },
            "site": {
                "id": login.site_id,
                "federation": login.federation,
                "state_dir": str(d.orchestrator_dir / "site-state"),
                "mqtt": {
                    "url": url,
                    "username": login.site_id,
                    "password": site_password,
                    "ca_file": str(d.ca_cert),
                },
            },
        },
        header=header,
        comments={
            "rounds": "The site round of each central round (the central round sets epochs,\n"
            "batch size and learning rate; its deadline caps deadline_seconds).",
            "site": "The site as one device of the central federation (docs/sites.md).",
        },
    )

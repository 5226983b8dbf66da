"""Where ``fedge broker init`` puts things in its directory, and the small record it keeps.

::

    DIR/fedge-broker.json        federation, host names, ports, broker URL (no secrets)
    DIR/ca/ca.crt, ca.key        the fleet's certificate authority (keep ca.key offline later)
    DIR/broker/broker.crt, .key  the broker's TLS certificate (SANs = the host names)
    DIR/broker/crl.pem           revoked client certificates (with --mtls-port)
    DIR/mosquitto/               mosquitto.conf, passwd, acl, data/, mosquitto.pid
    DIR/keys/signing.key, .pub   the bundle signing key pair (sign with `fedge export --sign-key`)
    DIR/orchestrator/            orchestrator.toml (credentials, CA, trusted key); a site
                                 broker (--site): site.toml instead
    DIR/central/ca.crt           a site broker's copy of the central CA (its bridge's TLS)
    DIR/devices/NAME/            agent.toml, ca.crt, signing.pub: copy this folder to the device
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedge.protocol.errors import ConfigError

RECORD_NAME = "fedge-broker.json"


@dataclass
class BrokerRecord:
    """What ``fedge device add`` needs to know about the broker (no secrets in here)."""

    federation: str
    hosts: list[str]
    tls_port: int
    plain_port: int
    orchestrator_user: str
    devices: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    mtls_port: int = 0  # the mutual-TLS listener (0: none; fedge broker init --mtls-port)
    cert_devices: list[str] = field(default_factory=list)  # devices with a client certificate

    @property
    def mtls_url(self) -> str:
        """The URL of devices with a client certificate: the mutual-TLS listener."""
        return self.url.rsplit(":", 1)[0] + f":{self.mtls_port}"

    @property
    def url(self) -> str:
        """The URL devices use: ``mqtts://<first host name>:<tls port>``."""
        host = self.hosts[0]
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        return f"mqtts://{host}:{self.tls_port}"


class BrokerDir:
    """Paths inside one broker directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    record = property(lambda self: self.root / RECORD_NAME)
    ca_dir = property(lambda self: self.root / "ca")
    ca_cert = property(lambda self: self.ca_dir / "ca.crt")
    ca_key = property(lambda self: self.ca_dir / "ca.key")
    broker_dir = property(lambda self: self.root / "broker")
    broker_cert = property(lambda self: self.broker_dir / "broker.crt")
    broker_key = property(lambda self: self.broker_dir / "broker.key")
    crl = property(lambda self: self.broker_dir / "crl.pem")  # revoked client certificates
    mosquitto_dir = property(lambda self: self.root / "mosquitto")
    mosquitto_conf = property(lambda self: self.mosquitto_dir / "mosquitto.conf")
    passwd = property(lambda self: self.mosquitto_dir / "passwd")
    acl = property(lambda self: self.mosquitto_dir / "acl")
    pid_file = property(lambda self: self.mosquitto_dir / "mosquitto.pid")
    keys_dir = property(lambda self: self.root / "keys")
    signing_key = property(lambda self: self.keys_dir / "signing.key")
    signing_pub = property(lambda self: self.keys_dir / "signing.pub")
    orchestrator_dir = property(lambda self: self.root / "orchestrator")
    orchestrator_toml = property(lambda self: self.orchestrator_dir / "orchestrator.toml")
    site_toml = property(lambda self: self.orchestrator_dir / "site.toml")  # broker init --site

    def device_dir(self, name: str) -> Path:
        return self.root / "devices" / name

    def load_record(self) -> BrokerRecord:
        """Read ``fedge-broker.json``; a clear error when DIR is not a broker directory."""
        try:
            data = json.loads(self.record.read_text())
            return BrokerRecord(**data)
        except FileNotFoundError:
            raise ConfigError(
                f"{self.root} is not a broker directory (no {RECORD_NAME}); "
                f"run `fedge broker init {self.root}` first or pass --dir"
            ) from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.record} is damaged: {exc}") from exc

    def save_record(self, record: BrokerRecord) -> None:
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
        tmp.replace(self.record)


def write_secret(path: Path, text: str) -> None:
    """Write a file that holds a secret with mode 0600 (replacing an older one)."""
    import os

    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)

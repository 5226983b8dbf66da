"""``fedge broker init``: everything a broker host needs, in one directory.

A CA and the broker's TLS certificate (SANs = the host names given, plus localhost and
127.0.0.1 for the orchestrator on the same host), Mosquitto's config / password file / ACL
(rendered by ``fedge.orchestrator.broker_files``: TLS listener, no anonymous access, ``%u``
patterns), the orchestrator's credentials, the bundle signing key pair and a ready
``orchestrator.toml``. Nothing is overwritten: running it twice on one directory is an error.
"""

from __future__ import annotations

import getpass
import logging
import os
import pwd
import secrets
from collections.abc import Sequence
from pathlib import Path

from fedge.orchestrator.broker_files import (
    DEFAULT_ORCHESTRATOR_USER,
    TlsSettings,
    write_broker_files,
)
from fedge.orchestrator.config import MetricsSettings, OrchestratorConfig, RoundSettings
from fedge.protocol import signing
from fedge.protocol.errors import ConfigError, MessageError
from fedge.protocol.toml_writer import Commented, render_toml
from fedge.protocol.topics import validate_name

from .certs import make_ca, make_crl, make_server_cert, write_pem
from .layout import BrokerDir, BrokerRecord, write_secret
from .site_init import install_central_files, read_central_login, site_toml

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("localhost", "127.0.0.1")


def default_run_as() -> str:
    """Mosquitto's ``user``: the invoking user, or ``mosquitto`` when run as root."""
    return "mosquitto" if os.geteuid() == 0 else getpass.getuser()


def init_broker(
    root: str | Path,
    *,
    hosts: Sequence[str],
    federation: str = "demo",
    tls_port: int = 8883,
    plain_port: int = 1883,
    bind_address: str = "0.0.0.0",
    run_as_user: str | None = None,
    orchestrator_user: str = DEFAULT_ORCHESTRATOR_USER,
    mtls_port: int | None = None,
    site: str | Path | None = None,
) -> BrokerDir:
    """Create a broker directory at ``root`` (see ``fedge.provision.layout``) and return it.

    ``hosts`` are the names devices use to reach the broker; the first one goes into the
    device configs' ``mqtts://`` URL. The plain listener (``plain_port``) stays on 127.0.0.1.
    ``mtls_port`` adds a mutual-TLS listener for devices with client certificates (``fedge
    device add NAME --cert``), with an (empty) CRL that ``fedge device revoke`` extends.
    ``site``: the folder ``fedge device add SITE`` wrote on the central broker host; the
    broker becomes that site's, bridged to the central one (provision/site_init.py).
    """
    try:
        validate_name(federation, "federation")
    except MessageError as exc:
        raise ConfigError(str(exc)) from None
    login = read_central_login(site) if site is not None else None
    if login is not None and login.federation == federation:
        raise ConfigError(
            f"--federation {federation!r} is the central federation's name: the site's devices "
            f"need their own (e.g. {federation}-{login.site_id})"
        )
    d = BrokerDir(root)
    if d.record.exists():
        raise ConfigError(f"{d.root} is already a broker directory ({d.record} exists)")
    all_hosts = list(dict.fromkeys([h.strip() for h in hosts if h.strip()] + list(LOOPBACK_HOSTS)))
    for sub in (d.ca_dir, d.broker_dir, d.keys_dir, d.orchestrator_dir, d.root / "devices"):
        sub.mkdir(parents=True, exist_ok=True)

    ca = make_ca(f"fedge {federation} CA")
    write_pem(ca, d.ca_cert, d.ca_key)
    write_pem(make_server_cert(ca, all_hosts), d.broker_cert, d.broker_key)
    signing.write_keypair(d.keys_dir, "signing")
    mtls = None
    if mtls_port:
        d.crl.write_bytes(make_crl(ca, []))
        mtls = TlsSettings(
            cafile=d.ca_cert,
            certfile=d.broker_cert,
            keyfile=d.broker_key,
            port=mtls_port,
            bind_address=bind_address,
            crlfile=d.crl,
        )

    orch_password = secrets.token_urlsafe(24)
    users = {orchestrator_user: orch_password}
    bridge = None
    if login is not None:
        central_ca, _pub = install_central_files(login, d)
        bridge = login.bridge(central_ca)
        users[login.site_id] = secrets.token_urlsafe(24)  # the site aggregator's upstream face
    write_broker_files(
        d.mosquitto_dir,
        port=plain_port,
        federation=federation,
        users=users,
        orchestrator_user=orchestrator_user,
        bind_address="127.0.0.1",
        tls=TlsSettings(
            cafile=d.ca_cert,
            certfile=d.broker_cert,
            keyfile=d.broker_key,
            port=tls_port,
            bind_address=bind_address,
        ),
        run_as_user=run_as_user or default_run_as(),
        pid_file=d.pid_file,
        mtls=mtls,
        bridge=bridge,
    )
    _give_to_broker_user(d, run_as_user or default_run_as())
    record = BrokerRecord(
        federation=federation,
        hosts=all_hosts,
        tls_port=tls_port,
        plain_port=plain_port,
        orchestrator_user=orchestrator_user,
        mtls_port=mtls_port or 0,
    )
    d.save_record(record)
    if login is not None:
        text = site_toml(d, record, login, orch_password, users[login.site_id])
        write_secret(d.site_toml, text)
    else:
        write_secret(d.orchestrator_toml, _orchestrator_toml(d, record, orch_password))
    log.info(
        "broker directory %s ready for federation %s (hosts %s)", d.root, federation, all_hosts
    )
    return d


def _give_to_broker_user(d: BrokerDir, user: str) -> None:
    """As root, hand Mosquitto's directory and TLS key to the user Mosquitto switches to."""
    if os.geteuid() != 0 or user == "root":
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        log.warning("user %s does not exist: create it or pass --run-as", user)
        return
    paths = [
        d.mosquitto_dir,
        *d.mosquitto_dir.rglob("*"),
        d.broker_dir,
        d.broker_cert,
        d.broker_key,
        *([d.crl] if d.crl.exists() else []),
    ]
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)


ORCHESTRATOR_COMMENTS = {
    "strategy": "how deltas are combined: fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad,\n"
    "median, trimmed_mean, krum (options: [strategy_options], docs/strategies.md)",
    "exit_when_done": "stop after the last round (false: stay up and serve the final model)",
    "mqtt": "the orchestrator's own broker login (keep this file mode 0600)",
    "rounds": "How rounds are run (more keys: orchestrator/config.py RoundSettings). Any key can be\n"
    "overridden: --set rounds.min_devices=10 or FEDGE_ROUNDS_MIN_DEVICES=10.",
    "rounds.rounds": "model versions to produce (committed rounds), then stop",
    "rounds.min_devices": "A round opens as soon as this many eligible devices are online. Set it to\n"
    "the fleet size (or the number every round should have): with the default 2,\n"
    "ten agents started together get a first round of only two devices.",
    "rounds.devices_per_round": "updates a round needs (its goal); 0 = every eligible device online",
    "rounds.over_selection": "invite goal x this (1.3 = 30% spare devices against dropouts)",
    "rounds.min_reports": "commit a round with at least this many accepted updates, else "
    "abandon it",
    "rounds.deadline_seconds": "a round closes after this long with the updates it has",
    "rounds.local_epochs": "passes over its local training rows each device makes per round",
    "rounds.batch_size": "rows per training step on the device",
    "rounds.learning_rate": "local learning rate; 0 = the bundle's own (from fedge export)",
    "rounds.optimizer": "the devices' optimizer, one the bundle carries (fedge inspect lists them;\n"
    'exports carry adamw and sgd): "adamw" | "sgd"; "" = the bundle\'s default (its first)',
    "rounds.weight_decay": "AdamW's decoupled weight decay; -1 = the bundle's own. SGD has no weight\n"
    "decay and no momentum (ONNX Runtime's SGD graph): leave -1 with sgd",
    "rounds.max_samples": "cap on training rows per device and round; 0 = all rows",
    "rounds.evaluate_every": "after every N committed rounds, one round in which the devices only\n"
    "evaluate the model on their validation rows (0 = never)",
    "evaluation": "Central evaluation: every committed model is scored on a held-out SQLite table\n"
    "on this host (all its rows; devices' data never leaves them).",
    "evaluation.enabled": "true needs [evaluation.data] path (and table/features/label if they\n"
    "differ from the defaults)",
    "evaluation.data": "the same keys as an agent's [data] section: see docs/data.md",
    "metrics": "Prometheus metrics on http://host:port/metrics",
    "metrics.port": "0 = off; e.g. 9464",
}


def _orchestrator_toml(d: BrokerDir, record: BrokerRecord, password: str) -> str:
    host = "localhost" if "localhost" in record.hosts else record.hosts[0]
    header = (
        f"fedge orchestrator for federation '{record.federation}' (written by fedge broker init).\n"
        "Holds the orchestrator's broker password: keep it mode 0600.\n"
        f"Sign bundles with {d.signing_key}:\n"
        f"  fedge export ... --sign-key {d.signing_key} --out {d.root / 'bundle.fedge'}\n"
        "Check it: fedge doctor --config orchestrator.toml"
    )
    rs, metrics = RoundSettings(), MetricsSettings()
    return render_toml(
        {
            "federation": record.federation,
            "client_id": record.orchestrator_user,
            "bundle": str(d.root / "bundle.fedge"),
            "database": str(d.orchestrator_dir / "orchestrator.db"),
            "trusted_keys": [str(d.signing_pub)],
            "strategy": OrchestratorConfig().strategy,
            "exit_when_done": OrchestratorConfig().exit_when_done,
            "mqtt": {
                "url": f"mqtts://{host}:{record.tls_port}",
                "username": record.orchestrator_user,
                "password": password,
                "ca_file": str(d.ca_cert),
            },
            "rounds": {
                key: getattr(rs, key)
                for key in (
                    "rounds",
                    "min_devices",
                    "devices_per_round",
                    "over_selection",
                    "min_reports",
                    "deadline_seconds",
                    "local_epochs",
                    "batch_size",
                    "learning_rate",
                    "optimizer",
                    "weight_decay",
                    "max_samples",
                    "evaluate_every",
                )
            },
            "evaluation": {
                "enabled": False,
                "data": {
                    "path": Commented("/var/lib/fedge/test.db"),
                    "table": Commented("samples"),
                    "label": Commented("label"),
                },
            },
            "metrics": {"port": metrics.port},
        },
        header=header,
        comments=ORCHESTRATOR_COMMENTS,
    )

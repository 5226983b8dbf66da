"""``fedge broker init``, ``fedge device add|revoke|list`` and ``fedge doctor`` (thin)."""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any

from fedge.protocol.errors import ConfigError

_FMT = argparse.RawDescriptionHelpFormatter
_DIR_HELP = "broker directory made by `fedge broker init` (default: $FEDGE_BROKER_DIR or .)"


def register(sub: Any) -> None:
    _register_broker(sub)
    _register_device(sub)
    p = sub.add_parser(
        "doctor",
        help="check this machine for what its role needs and print what to fix",
        description="Check Python, the training backend, data and keys, disk, the clock, and "
        "the broker (reachable, TLS with the CA and host name; --login: credentials).",
        epilog="Example:\n  fedge doctor --config /etc/fedge/agent.toml\n"
        "  fedge doctor --config agent.toml --set data.path=/var/lib/fedge/readings.db\n"
        "  fedge doctor --config orchestrator.toml --login",
        formatter_class=_FMT,
    )
    p.add_argument("--config", help="agent or orchestrator TOML file")
    p.add_argument("--role", choices=["auto", "agent", "orchestrator", "site"], default="auto")
    p.add_argument(  # the same option as `fedge agent` / `fedge orchestrator`
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting"
    )
    p.add_argument(
        "--login",
        action="store_true",
        help="also log in to the broker with the config's credentials (keeps the device's "
        "session; skipped while the agent runs on this machine, whose own connection "
        "problems are shown instead)",
    )
    p.set_defaults(func=_doctor)


def _register_broker(sub: Any) -> None:
    p = sub.add_parser(
        "broker",
        help="provision a Mosquitto broker host (CA, TLS, passwords, ACL, signing key)",
        description="Provision the broker host of a federation.",
        epilog="Example:\n  fedge broker init /etc/fedge-broker --host broker.lan",
        formatter_class=_FMT,
    )
    actions = p.add_subparsers(dest="broker_command", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init",
        help="create a CA, the broker's TLS certificate, Mosquitto files and orchestrator.toml",
        description="Write everything a broker host needs into DIR: a CA, a TLS certificate "
        "for the host names, mosquitto.conf / passwd / acl, the orchestrator's credentials, "
        "the bundle signing key pair and orchestrator.toml. Never overwrites.",
        epilog="Example:\n  fedge broker init /etc/fedge-broker --host broker.lan --host 192.168.1.10\n"
        "  mosquitto -c /etc/fedge-broker/mosquitto/mosquitto.conf\n"
        "A site broker (on the central host first: fedge device add hospital-a --dir CENTRAL):\n"
        "  fedge broker init /etc/fedge-site --host site.lan --site ./hospital-a",
        formatter_class=_FMT,
    )
    init.add_argument("dir", help="directory to create (or an empty one)")
    init.add_argument(
        "--host",
        action="append",
        default=[],
        help="name or IP devices use for the broker (repeatable; default: this host's name); "
        "localhost and 127.0.0.1 are always added",
    )
    init.add_argument(
        "--federation",
        default=None,
        help="the federation's name (default: demo; with --site: CENTRAL-SITE, the site's own)",
    )
    init.add_argument("--tls-port", type=int, default=8883)
    init.add_argument("--plain-port", type=int, default=1883, help="loopback-only plain listener")
    init.add_argument("--bind", default="0.0.0.0", help="address of the TLS listener")
    init.add_argument(
        "--mtls-port",
        type=int,
        default=None,
        help="also open a mutual-TLS listener on this port for devices with client "
        "certificates (fedge device add NAME --cert)",
    )
    init.add_argument(
        "--run-as", default=None, help="Mosquitto's `user` (default: you, or mosquitto as root)"
    )
    init.add_argument(
        "--site",
        default=None,
        metavar="DEVICE_FOLDER",
        help="make this a site broker bridged to the central one: the folder `fedge device add "
        "SITE --dir CENTRAL_DIR` wrote for the site on the central host (docs/sites.md)",
    )
    init.set_defaults(func=_broker_init)


def _register_device(sub: Any) -> None:
    p = sub.add_parser(
        "device",
        help="add, revoke or list the devices of a broker directory",
        description="Manage device credentials in a broker directory.",
        epilog="Example:\n  fedge device add pi-kitchen --dir /etc/fedge-broker",
        formatter_class=_FMT,
    )
    actions = p.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="create a device's password entry and a ready agent.toml",
        description="Create a password entry for NAME and write devices/NAME/ (agent.toml, "
        "ca.crt, signing.pub) to copy to the device. Reloads a running broker.",
        epilog="Example:\n  fedge device add pi-kitchen --dir /etc/fedge-broker --install-dir /etc/fedge \\\n"
        "      --data /var/lib/fedge/readings.db\n"
        "  scp -r /etc/fedge-broker/devices/pi-kitchen pi@pi-kitchen:fedge",
        formatter_class=_FMT,
    )
    add.add_argument("name", help="device id (MQTT user name): letters, digits, _ - .")
    add.add_argument("--dir", default=None, help=_DIR_HELP)
    add.add_argument(
        "--install-dir",
        default=None,
        help="where the folder will live on the device (e.g. /etc/fedge)",
    )
    add.add_argument("--data", default="/var/lib/fedge/data.db", help="SQLite file on the device")
    add.add_argument("--table", default="samples", help="table in the SQLite file")
    add.add_argument(
        "--state-dir", default=None, help="agent state dir (default: INSTALL_DIR/state)"
    )
    add.add_argument(
        "--cert",
        action="store_true",
        help="issue a client certificate from the broker's CA instead of a password "
        "(mutual TLS; needs `fedge broker init --mtls-port`)",
    )
    add.set_defaults(func=_device_add)
    rev = actions.add_parser(
        "revoke",
        help="remove a device's password entry (the broker refuses it after a reload)",
        description="Delete NAME from the password file and its agent.toml, then reload a "
        "running broker (SIGHUP) so that it refuses the device.",
        epilog="Example:\n  fedge device revoke pi-kitchen --dir /etc/fedge-broker",
        formatter_class=_FMT,
    )
    rev.add_argument("name")
    rev.add_argument("--dir", default=None, help=_DIR_HELP)
    rev.set_defaults(func=_device_revoke)
    ls = actions.add_parser(
        "list",
        help="list devices and whether they are active or revoked",
        description="List the devices of a broker directory.",
        epilog="Example:\n  fedge device list --dir /etc/fedge-broker",
        formatter_class=_FMT,
    )
    ls.add_argument("--dir", default=None, help=_DIR_HELP)
    ls.set_defaults(func=_device_list)


def _dir(args: argparse.Namespace) -> str:
    return args.dir or os.environ.get("FEDGE_BROKER_DIR") or "."


def _broker_init(args: argparse.Namespace) -> int:
    from .broker_init import init_broker

    hosts = args.host or [socket.gethostname()]
    federation = args.federation
    if federation is None and args.site:
        from .site_init import read_central_login

        login = read_central_login(args.site)
        federation = f"{login.federation}-{login.site_id}"
    d = init_broker(
        args.dir,
        hosts=hosts,
        federation=federation or "demo",
        site=args.site,
        tls_port=args.tls_port,
        plain_port=args.plain_port,
        bind_address=args.bind,
        run_as_user=args.run_as,
        mtls_port=args.mtls_port,
    )
    record = d.load_record()
    print(f"broker directory: {d.root}")
    print(f"  CA:            {d.ca_cert} (key {d.ca_key}: keep it secret)")
    print(f"  TLS cert:      {d.broker_cert} for {', '.join(record.hosts)}")
    print(f"  mosquitto:     mosquitto -c {d.mosquitto_conf}")
    print(f"  devices use:   {record.url}")
    if args.site:
        print(f"  trusted key:   {d.signing_pub} (the central one: bundles are signed there)")
    else:
        print(f"  signing key:   {d.signing_key} (sign bundles: fedge export ... --sign-key)")
    if args.site:
        print(f"  bridge:        to the central broker, in {d.mosquitto_conf}")
        print(f"  site:          fedge orchestrator --role site --config {d.site_toml}")
    else:
        print(f"  orchestrator:  fedge orchestrator --config {d.orchestrator_toml}")
    print(f"next: fedge device add NAME --dir {d.root}")
    return 0


def _device_add(args: argparse.Namespace) -> int:
    from .devices import add_device, reload_broker

    files = add_device(
        _dir(args),
        args.name,
        install_dir=args.install_dir,
        data_path=args.data,
        data_table=args.table,
        state_dir=args.state_dir,
        cert=args.cert,
    )
    print(f"device {args.name}: copy {files.folder}/ to the device")
    if args.cert:
        print(f"  agent config:  {files.agent_toml} (client.crt + client.key: mutual TLS)")
    else:
        print(f"  agent config:  {files.agent_toml} (holds its password; mode 0600)")
    _print_reload(reload_broker(_dir(args)), "accepts")
    return 0


def _device_revoke(args: argparse.Namespace) -> int:
    from .devices import reload_broker, revoke_device

    if not revoke_device(_dir(args), args.name):
        raise ConfigError(f"device '{args.name}' has no password entry (already revoked?)")
    print(f"device {args.name}: credentials revoked (password entry, or certificate in the CRL)")
    _print_reload(reload_broker(_dir(args)), "refuses")
    return 0


def _print_reload(pid: int | None, verb: str) -> None:
    if pid is not None:
        print(f"  reloaded the broker (SIGHUP to PID {pid}): it now {verb} the device")
    else:
        print(
            "  broker not running from this directory: after starting or reloading it "
            f"(kill -HUP <pid>, or systemctl reload mosquitto) it {verb} the device"
        )


def _device_list(args: argparse.Namespace) -> int:
    from .devices import list_devices

    for name, state in sorted(list_devices(_dir(args)).items()):
        print(f"{name}\t{state}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import FAIL, diagnose, format_report

    role, checks = diagnose(args.config, args.role, login=args.login, overrides=args.set)
    print(format_report(role, checks))
    return 1 if any(c.status == FAIL for c in checks) else 0

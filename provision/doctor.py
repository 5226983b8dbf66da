"""``fedge doctor``: check a machine for what its role needs and say what to fix.

Each check returns a ``Check`` (ok, warn or fail, what was found, how to fix it); nothing
here changes the machine. The broker check goes as far as an MQTT login with the config's
credentials, through TLS with the config's CA file and host name when the URL is mqtts://.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.protocol.errors import ConfigError
from fedge.protocol.mqtt_failures import describe_connect_error, describe_refusal
from fedge.protocol.mqtt_link import MqttSettings

OK, WARN, FAIL = "ok", "warn", "FAIL"
MIN_FREE_BYTES = 200 * 1024**2
LOW_FREE_BYTES = 1024**3


@dataclass(frozen=True)
class Check:
    """One finding: ``status`` is ok, warn or FAIL; ``fix`` says what to do about it."""

    name: str
    status: str
    detail: str
    fix: str = ""


def check_python() -> Check:
    v = sys.version_info
    text = f"{v.major}.{v.minor}.{v.micro}"
    if v < (3, 10):
        return Check("python", FAIL, text, "install Python 3.10 or newer")
    if v >= (3, 13):
        return Check(
            "python",
            WARN,
            text,
            "the ort-training backend needs Python <= 3.12 (ort-portable works)",
        )
    return Check("python", OK, text)


def check_backend() -> Check:
    try:
        from fedge.agent.backends import available_backends

        found = available_backends()
    except Exception as exc:  # an import error of a broken install is the finding itself
        return Check(
            "backend", FAIL, f"cannot import the agent: {exc}", "pip install 'fedge[agent]'"
        )
    if not found:
        return Check("backend", FAIL, "no training backend installed", "pip install 'fedge[agent]'")
    from fedge.protocol.ort_runtime import runtime_version

    return Check("backend", OK, f"{', '.join(found)} on {runtime_version()}")


def check_disk(path: str | Path) -> Check:
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free
    text = f"{free / 1024**3:.1f} GiB free at {p}"
    if free < MIN_FREE_BYTES:
        return Check("disk", FAIL, text, "free at least 200 MB (bundles, outbox, database)")
    if free < LOW_FREE_BYTES:
        return Check("disk", WARN, text, "less than 1 GiB free; large models need more")
    return Check("disk", OK, text)


def check_clock() -> Check:
    """NTP synchronisation as systemd reports it (skew itself is not measurable over MQTT)."""
    if not shutil.which("timedatectl"):
        return Check(
            "clock",
            WARN,
            "timedatectl not found; cannot tell if the clock is synced",
            "keep the clock synced (NTP): TLS certificates and round deadlines need it",
        )
    try:
        out = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    if out == "yes":
        return Check("clock", OK, "synchronised with NTP")
    return Check(
        "clock",
        WARN,
        f"NTP synchronised: {out or 'unknown'}",
        "sudo timedatectl set-ntp true (a wrong clock breaks TLS and round deadlines)",
    )


def check_file(name: str, path: str, fix: str) -> Check:
    p = Path(path)
    if not path or not p.is_file():
        return Check(name, FAIL, f"{path or '(not set)'} not found", fix)
    try:
        p.open("rb").close()
    except OSError as exc:
        return Check(name, FAIL, f"{p}: {exc.strerror}", "fix the file's permissions")
    return Check(name, OK, str(p))


def check_broker(
    mqtt: MqttSettings, client_id: str, *, login: bool = False, timeout: float = 5.0
) -> list[Check]:
    """TCP reachability, the TLS handshake (CA + host name), then (``login``) an MQTT login.

    The login uses the config's user name, which the broker also uses as the client id: it
    takes over the connection of a process using the same credentials, so it is opt-in, and
    `diagnose` skips it while the agent runs on this machine. It resumes the session (no
    clean start, the config's session expiry) rather than wiping the device's subscriptions
    and queued messages.
    """
    try:
        host, port, tls = mqtt.host_port()
    except ConfigError as exc:
        return [Check("broker", FAIL, str(exc), 'set mqtt.url = "mqtts://host:8883"')]
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return [
            Check(
                "broker",
                FAIL,
                f"cannot reach {where}: {exc}",
                "start the broker, check the host name, port and firewall",
            )
        ]
    checks = [Check("broker", OK, f"{where} reachable")]
    if not tls:
        sock.close()
        checks.append(
            Check(
                "tls",
                WARN,
                "mqtt:// is not encrypted",
                "use the mqtts:// URL written by `fedge device add`",
            )
        )
    else:
        context = ssl.create_default_context(cafile=mqtt.ca_file or None)
        if mqtt.cert_file:  # a mutual-TLS listener wants the device's certificate
            try:
                context.load_cert_chain(mqtt.cert_file, mqtt.key_file or None)
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                checks.append(
                    Check(
                        "tls",
                        FAIL,
                        f"cannot load the client certificate {mqtt.cert_file}: {exc}",
                        "set mqtt.cert_file / mqtt.key_file to the files from "
                        "`fedge device add --cert`",
                    )
                )
                return checks
        try:
            with context.wrap_socket(sock, server_hostname=host) as tls_sock:
                version = tls_sock.version()
            checks.append(Check("tls", OK, f"{version}, certificate valid for {host}"))
        except ssl.SSLCertVerificationError as exc:
            checks.append(Check("tls", FAIL, exc.verify_message or str(exc), _tls_fix(exc)))
            return checks
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            checks.append(
                Check(
                    "tls",
                    FAIL,
                    f"TLS handshake with {where} failed: {exc}",
                    "is this the TLS port? (plain listeners do not speak TLS)",
                )
            )
            return checks
        except FileNotFoundError:  # pragma: no cover - create_default_context raises first
            raise
    if login:
        checks.append(_check_login(mqtt, client_id, timeout))
    return checks


def _tls_fix(exc: ssl.SSLCertVerificationError) -> str:
    message = (exc.verify_message or "").lower()
    if "not yet valid" in message or "expired" in message:
        return "the clock is wrong or the certificate expired: sync the clock (NTP), or re-issue"
    if "hostname" in message or "ip address mismatch" in message:
        return (
            "connect with a host name listed in the broker certificate (fedge broker init --host)"
        )
    return "set mqtt.ca_file to the fleet's ca.crt (from fedge device add)"


def _check_login(mqtt: MqttSettings, client_id: str, timeout: float) -> Check:
    import paho.mqtt.client as paho

    host, port, tls = mqtt.host_port()
    done = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        result["reason"] = reason
        done.set()

    v5 = mqtt.protocol == "5"
    if v5:
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
    else:  # keep the device's persistent session (paho's default would wipe it)
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=False,
        )
    if mqtt.username:
        client.username_pw_set(mqtt.username, mqtt.password or None)
    if tls:
        client.tls_set(
            ca_certs=mqtt.ca_file or None,
            certfile=mqtt.cert_file or None,
            keyfile=mqtt.key_file or None,
        )
    client.on_connect = on_connect
    kwargs: dict[str, Any] = {}
    if v5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = mqtt.session_expiry  # as the agent: the session stays
        kwargs = {"clean_start": False, "properties": props}
    try:
        client.connect(host, port, keepalive=10, **kwargs)
        client.loop_start()
        done.wait(timeout)
    except OSError as exc:
        _, message = describe_connect_error(exc, f"{host}:{port}")
        return Check("login", FAIL, message, "see the broker/tls checks")
    finally:
        client.disconnect()
        client.loop_stop()
    reason = result.get("reason")
    if reason is None:
        return Check("login", FAIL, "no CONNACK from the broker", "is this an MQTT port?")
    if reason.is_failure:
        _, message = describe_refusal(reason.value, reason, mqtt.username)
        return Check(
            "login",
            FAIL,
            message,
            "check mqtt.username/password; a revoked device needs `fedge device add` again",
        )
    return Check("login", OK, f"logged in as {mqtt.username} (session kept)")


def check_running_agent(state_dir: str, device: str) -> tuple[int | None, list[Check]]:
    """Whether this machine runs the agent (its state-dir lock), and its link's last problem
    (TLS, login refused, another process using the device's credentials)."""
    from fedge.agent.instance_lock import read_link_problem, running_pid

    pid = running_pid(state_dir)
    checks: list[Check] = []
    if pid is not None:
        checks.append(Check("agent", OK, f"running here (PID {pid})"))
    problem = read_link_problem(state_dir)
    if problem:
        checks.append(
            Check(
                "agent link",
                FAIL if pid is not None else WARN,
                problem if pid is not None else f"when it last ran: {problem}",
                "see the agent's log (journalctl -u fedge-agent) for every attempt",
            )
        )
    return pid, checks


def skipped_login(device: str, pid: int) -> Check:
    return Check(
        "login",
        WARN,
        f"not logging in: the agent of device {device} runs on this machine (PID {pid}) and "
        "the broker keeps one connection per device: a login with its credentials would "
        "disconnect it",
        "its own connection is checked above ('agent link'); stop the agent to test the login",
    )


def diagnose(
    config_path: str | None,
    role: str = "auto",
    *,
    login: bool = False,
    overrides: list[str] | None = None,
) -> tuple[str, list[Check]]:
    """Run the checks for ``role`` (agent, orchestrator, site, or auto from the config file) on the
    settings the process would run with: the file, ``FEDGE_*`` variables and ``overrides``
    (``--set key=value`` items)."""
    from fedge.protocol.settings import load_settings

    checks = [check_python()]
    cfg: Any = None
    skipped: Check | None = None
    if role in ("auto", "agent"):
        from fedge.agent.config import AgentConfig

        try:
            cfg = load_settings(AgentConfig, config_path, overrides=overrides)
            role = "agent"
        except ConfigError as exc:
            if role == "agent" or "unknown setting" not in str(exc):
                return role, [*checks, Check("config", FAIL, str(exc), "fix the config file")]
    if cfg is None and role in ("auto", "orchestrator"):
        from fedge.orchestrator.config import OrchestratorConfig

        try:
            cfg = load_settings(OrchestratorConfig, config_path, overrides=overrides)
            role = "orchestrator"
        except ConfigError as exc:
            if role == "orchestrator" or "unknown setting 'site" not in str(exc):
                return role, [*checks, Check("config", FAIL, str(exc), "fix the config file")]
    if cfg is None:  # a site aggregator's site.toml (docs/sites.md)
        from fedge.orchestrator.site_config import SiteConfig

        try:
            cfg = load_settings(SiteConfig, config_path, overrides=overrides)
            role = "site"
        except ConfigError as exc:
            return role, [*checks, Check("config", FAIL, str(exc), "fix the config file")]
    checks.append(Check("config", OK, f"{config_path or '(defaults)'} read as {role} config"))
    if role == "agent":
        checks.append(check_backend())
        checks.append(
            check_file("data", cfg.data.path, "set data.path to the device's SQLite file")
        )
        keys_fix = "set trusted_keys to the fleet's signing.pub (from fedge device add)"
        checks += [check_file("trusted key", k, keys_fix) for k in cfg.trusted_keys] or [
            Check("trusted key", WARN, "none: unsigned bundles are accepted", keys_fix)
        ]
        checks.append(check_disk(cfg.state_dir))
        client_id = cfg.id
        pid, agent_checks = check_running_agent(cfg.state_dir, cfg.id)
        checks += agent_checks
        if login and pid is not None:
            login = False
            skipped = skipped_login(cfg.id, pid)
    else:
        checks.append(
            check_file("bundle", cfg.bundle, "export a signed bundle to this path")
            if not Path(cfg.bundle).is_dir()
            else Check("bundle", OK, cfg.bundle)
        )
        checks.append(check_disk(Path(cfg.database).parent))
        client_id = cfg.client_id
    if cfg.mqtt.url.startswith("mqtts://") and cfg.mqtt.ca_file:
        checks.append(check_file("ca file", cfg.mqtt.ca_file, "copy the fleet's ca.crt here"))
    checks.append(check_clock())
    checks += check_broker(cfg.mqtt, client_id, login=login)
    if role == "site":  # its second login: the central federation's topics, bridged
        checks += check_broker(cfg.site.mqtt, cfg.site.id, login=login)
    if skipped is not None:
        checks.append(skipped)
    return role, checks


def format_report(role: str, checks: list[Check]) -> str:
    """The lines ``fedge doctor`` prints: status, check, finding, and a fix where needed."""
    lines = [f"fedge doctor ({role})"]
    for c in checks:
        lines.append(f"  {c.status:<4}  {c.name:<12} {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"        {'':<12} fix: {c.fix}")
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    lines.append(f"{failed} problem(s), {warned} warning(s)")
    return "\n".join(lines)

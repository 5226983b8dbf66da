"""Why an MQTT connection failed, in words a user can act on, and session-takeover detection.

paho-mqtt reports a failed TCP/TLS connect only through ``on_connect_fail(client, userdata)``,
which it calls inside its ``except OSError`` block: ``sys.exc_info()`` still holds the
exception there, and ``describe_connect_error`` turns it into one line. A refused CONNACK
(bad password, not authorised) and a broker-side DISCONNECT are described from their reason
codes. ``TakeoverWatch`` notices two processes sharing one device's credentials: MQTT 5 says
so (reason 142, "Session taken over") when the DISCONNECT arrives; on MQTT 3.1.1 (and when
Mosquitto just closes the socket, as 2.0.11 often does) repeated drops of fresh connections
are the sign. Pure logic, no I/O.
"""

from __future__ import annotations

import random
import ssl
from dataclasses import dataclass, field

SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason code
# CONNACK reason codes that mean "your credentials or certificate are not accepted"
AUTH_FAILURES = {4, 5, 134, 135, 138, 140}  # 3.1.1: 4 bad user/password, 5 not authorised
SHORT_CONNECTION_S = 60.0  # a connection dropped sooner counts as a possible takeover
SUSPECT_AFTER = 2  # consecutive short drops (without reason 142) before we call it a takeover
TAKEOVER_BASE_DELAY_S = 5
TAKEOVER_MAX_DELAY_S = 300


def describe_connect_error(exc: BaseException | None, where: str) -> tuple[bool, str]:
    """(is_security_failure, message) for the exception of a failed connect to ``where``.

    TLS problems (unknown CA, expired certificate, wrong host name, a client certificate the
    broker wants or refuses) are security failures; a refused or unreachable port is not.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or str(exc)
        low = why.lower()
        if "expired" in low or "not yet valid" in low:
            hint = "the broker certificate expired or this device's clock is wrong (sync NTP)"
        elif "hostname" in low or "ip address mismatch" in low:
            hint = "connect with a host name listed in the broker certificate"
        else:
            hint = "set mqtt.ca_file to the fleet's ca.crt"
        return True, f"TLS: broker {where} certificate not accepted: {why}; {hint}"
    if isinstance(exc, ssl.SSLError):
        low = str(exc).lower()
        if "certificate" in low:
            hint = "the broker wants a valid client certificate (mqtt.cert_file / mqtt.key_file)"
        else:
            hint = "is this the broker's TLS port?"
        return True, f"TLS handshake with {where} failed: {exc}; {hint}"
    if isinstance(exc, FileNotFoundError | PermissionError):
        return True, f"TLS files for {where} unreadable: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return False, f"connection to {where} refused (is the broker running?)"
    if exc is None:
        return False, f"connection to {where} failed"
    return False, f"connection to {where} failed: {type(exc).__name__}: {exc}"


def describe_tls_alert(paho_error: str, where: str) -> tuple[bool, str]:
    """(is_security_failure, message) for an error paho logged while reading from a TLS
    connection that never got its CONNACK (the broker ended the handshake with an alert)."""
    low = paho_error.lower()
    if "ssl" not in low and "alert" not in low:
        return False, f"connection to {where} lost before the CONNACK: {paho_error}"
    if "revoked" in low:
        hint = "this device's client certificate was revoked (fedge device revoke)"
    elif "certificate" in low:
        hint = "the broker wants a valid client certificate (mqtt.cert_file / mqtt.key_file)"
    else:
        hint = "check the TLS settings (mqtt.ca_file, mqtt.cert_file, mqtt.key_file)"
    return True, f"TLS: broker {where} refused the connection: {paho_error}; {hint}"


def describe_refusal(reason_value: int, reason: object, username: str) -> tuple[bool, str]:
    """(is_auth_failure, message) for a CONNACK that refused us."""
    who = username or "anonymous"
    if reason_value in AUTH_FAILURES:
        return True, (
            f"broker refused {who}: {reason}; check mqtt.username/password (or the client "
            "certificate); a revoked device needs `fedge device add` again"
        )
    return False, f"broker refused {who}: {reason}"


def takeover_message(client_id: str) -> str:
    return (
        f"another process is using device {client_id}'s credentials: the broker keeps one "
        "connection per device and the two take the session from each other; stop the "
        "other agent (or give it its own device with `fedge device add`); or the broker "
        "refuses one of our topics: RabbitMQ closes the connection then (Mosquitto drops the "
        "message), so check the user's topic permissions and the federation name "
        "(docs/brokers.md)"
    )


@dataclass
class TakeoverWatch:
    """Counts consecutive takeover-like disconnects and says how long to back off."""

    drops: int = 0
    _rng: random.Random = field(default_factory=random.Random)

    def on_disconnect(self, reason_value: int, connected_for: float, requested: bool) -> bool:
        """Record a disconnect; True if it is (or, on 3.1.1, looks like) a session takeover."""
        if requested:
            return False
        certain = reason_value == SESSION_TAKEN_OVER
        if not certain and connected_for >= SHORT_CONNECTION_S:
            self.drops = 0  # a connection that held for a while: an ordinary network drop
            return False
        self.drops = max(self.drops + 1, SUSPECT_AFTER) if certain else self.drops + 1
        return self.drops >= SUSPECT_AFTER

    def reconnect_delay(self) -> int:
        """Seconds to wait before the next attempt: grows with each takeover, with jitter
        (0: paho's ordinary reconnect delay, e.g. after a single drop or a broker restart)."""
        if self.drops < SUSPECT_AFTER:
            return 0
        delay = TAKEOVER_BASE_DELAY_S * 2 ** min(self.drops - SUSPECT_AFTER, 6)
        return int(min(TAKEOVER_MAX_DELAY_S, delay) * (1 + 0.5 * self._rng.random()))

"""Render RabbitMQ (3.10+, MQTT plugin) files for one federation: the same rules as Mosquitto's.

RabbitMQ speaks MQTT 3.1.1 only (up to 3.12), so every fedge process talking to it needs
``mqtt.protocol = "3.1.1"``. MQTT topics become routing keys on the ``amq.topic`` exchange
(``/`` becomes ``.``), and the generated Mosquitto ACL (``broker_files.render_acl``) becomes
*topic permissions*: one regular expression for writing and one for reading per user, matched
against the routing key (a subscription's filter is matched too: ``+`` is ``*`` there).

Mosquitto's ``use_username_as_clientid`` has no RabbitMQ equivalent, so the rules here also
pin the client id: a device's queue permissions name only its own session queues
(``mqtt-subscription-<id>qos0|1``), and its topic permissions only match while the client id
equals the username (``{client_id}`` in a lookahead). A device that connects with another
client id can neither declare a queue nor publish, so it cannot take over or drain another
client's session.

Example::

    defs = render_definitions(users={"fedge-orchestrator": "s3cret", "dev-0": "pw0"})
    Path("definitions.json").write_text(json.dumps(defs))
    # rabbitmq.conf: load_definitions = /path/definitions.json (render_config does that)
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedge.orchestrator.broker_files import (
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_MAX_QUEUED_MESSAGES,
    DEFAULT_ORCHESTRATOR_USER,
    federation_prefix,
)
from fedge.protocol.errors import ConfigError

VHOST = "/"
EXCHANGE = "amq.topic"
# Session queues live this long without their client (ms); Mosquitto keeps sessions 30 days.
SUBSCRIPTION_TTL_MS = 30 * 24 * 3600 * 1000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def routing_key(topic: str) -> str:
    """The AMQP routing key the MQTT plugin uses for ``topic`` (``/`` -> ``.``)."""
    return topic.replace("/", ".")


def _check_user(name: str) -> str:
    # '.' is a level separator in routing keys: a device id with a dot would span two levels
    # and its rules would match other names. fedge ids may contain dots; RabbitMQ's may not.
    if not _NAME.match(name):
        raise ConfigError(
            f"user {name!r} cannot be a RabbitMQ device: use 1-64 letters, digits, '_' or '-' "
            "('.' is a routing-key separator there)"
        )
    return name


def topic_permissions(
    user: str, *, federation: str = "demo", orchestrator_user: str = DEFAULT_ORCHESTRATOR_USER
) -> dict[str, str]:
    """``{"write": regex, "read": regex}`` for ``user`` on ``amq.topic``: the Mosquitto ACL's
    rules (``render_acl``) as routing-key expressions, only valid while client id = username."""
    _check_user(user)
    prefix = re.escape(routing_key(federation_prefix(federation)))
    me = re.escape(user)
    if user == orchestrator_user:
        everything = rf"^{prefix}\..+$"
        return {"write": everything, "read": everything}
    # The lookahead compares the routing key with {client_id}: RabbitMQ expands it to the
    # connection's client id, so a device writes only while that id is its username.
    # Writes name fedge's three up topics, not Mosquitto's ``up/#``: RabbitMQ replays no
    # retained message to the orchestrator's ``agent/+/up/#``, so it could never clear one a
    # device left on a topic of its own choosing; this bounds them to three per device.
    write = (
        rf"^(?={prefix}\.agent\.{{client_id}}\.)"
        rf"{prefix}\.agent\.{me}\.(status|up\.msg|up\.chunk)$"
    )
    read = (
        rf"^{prefix}\.("
        rf"agent\.{me}\.(status|cmd|down|invite)"
        rf"|round(\..+)?|orchestrator(\..+)?)$"
    )
    return {"write": write, "read": read}


def queue_permissions(user: str, *, orchestrator_user: str = DEFAULT_ORCHESTRATOR_USER) -> dict:
    """Vhost permissions: a user may declare, fill and read only its own session queues (the
    plugin names them ``mqtt-subscription-<client id>qos<0|1>``) and use ``amq.topic``."""
    del orchestrator_user  # the orchestrator's queues are named after its client id too
    own = rf"mqtt-subscription-{re.escape(_check_user(user))}qos[01]"
    return {
        "configure": rf"^{own}$",
        "write": rf"^({own}|{re.escape(EXCHANGE)})$",
        "read": rf"^({own}|{re.escape(EXCHANGE)})$",
    }


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def render_definitions(
    *,
    users: Mapping[str, str],
    federation: str = "demo",
    orchestrator_user: str = DEFAULT_ORCHESTRATOR_USER,
) -> dict[str, Any]:
    """A definitions document (``load_definitions``) with every user, its permissions and
    topic permissions, and a policy bounding each session queue like Mosquitto's
    ``max_queued_messages``/``max_queued_bytes``."""
    if orchestrator_user not in users:
        raise ConfigError(f"users must include the orchestrator user {orchestrator_user!r}")
    defs: dict[str, Any] = {
        "users": [],
        "vhosts": [{"name": VHOST}],
        "permissions": [],
        "topic_permissions": [],
        "policies": [
            {
                "vhost": VHOST,
                "name": "fedge-session-queues",
                "pattern": "^mqtt-subscription-",
                "apply-to": "queues",
                "priority": 0,
                "definition": {
                    "max-length": DEFAULT_MAX_QUEUED_MESSAGES,
                    "max-length-bytes": DEFAULT_MAX_QUEUED_BYTES,
                    # drop the oldest, as Mosquitto drops for a full client: "reject-publish"
                    # would withhold the publisher's PUBACK and stall the orchestrator
                    "overflow": "drop-head",
                },
            }
        ],
    }
    for name, password in users.items():
        if not password:
            raise ConfigError(f"user {name!r} needs a non-empty password")
        defs["users"].append(
            {
                "name": _check_user(name),
                "password_hash": password_hash(password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
        )
        perms = queue_permissions(name, orchestrator_user=orchestrator_user)
        defs["permissions"].append({"user": name, "vhost": VHOST, **perms})
        topic = topic_permissions(name, federation=federation, orchestrator_user=orchestrator_user)
        defs["topic_permissions"].append(
            {"user": name, "vhost": VHOST, "exchange": EXCHANGE, **topic}
        )
    return defs


def render_config(
    *,
    mqtt_port: int,
    definitions_path: Path,
    bind_address: str = "127.0.0.1",
    amqp_port: int | None = None,
) -> str:
    """``rabbitmq.conf``: MQTT on ``bind_address:mqtt_port`` with logins required, sessions
    kept 30 days, retained messages on disk; AMQP off unless ``amqp_port`` is given."""
    amqp = (
        f"listeners.tcp.default = {bind_address}:{amqp_port}"
        if amqp_port
        else "listeners.tcp = none"
    )
    return "\n".join(
        [
            "# fedge broker configuration (generated by fedge; RabbitMQ 3.10+ MQTT plugin).",
            amqp,
            f"mqtt.listeners.tcp.default = {bind_address}:{mqtt_port}",
            "mqtt.allow_anonymous = false",
            f"mqtt.vhost = {VHOST}",
            f"mqtt.exchange = {EXCHANGE}",
            f"mqtt.subscription_ttl = {SUBSCRIPTION_TTL_MS}",
            "mqtt.prefetch = 20",  # QoS 1 in flight per client, as Mosquitto's 20
            "mqtt.retained_message_store = rabbit_mqtt_retained_msg_store_dets",
            "mqtt.retained_message_store_dets_sync_interval = 1000",
            f"load_definitions = {definitions_path}",
            "",
        ]
    )

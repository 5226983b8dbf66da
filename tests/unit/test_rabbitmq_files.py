"""The RabbitMQ rules say what the Mosquitto ACL says (checked with Python's re, which agrees
with RabbitMQ's PCRE on these expressions; tests/integration/test_rabbitmq_broker.py checks
them on a real node)."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from fedge.orchestrator.rabbitmq_files import (
    password_hash,
    queue_permissions,
    render_config,
    render_definitions,
    routing_key,
    topic_permissions,
)
from fedge.protocol.errors import ConfigError

P = "fedge.v1.demo"


def allowed(rule: str, key: str, client_id: str) -> bool:
    # RabbitMQ substitutes {client_id} (and {username}, {vhost}) before matching
    return re.search(rule.replace("{client_id}", client_id), key) is not None


def test_routing_keys_use_dots() -> None:
    assert routing_key("fedge/v1/demo/agent/dev-0/up/msg") == f"{P}.agent.dev-0.up.msg"


def test_a_device_writes_only_its_own_status_and_up_topics() -> None:
    write = topic_permissions("dev-0")["write"]
    for key in (f"{P}.agent.dev-0.status", f"{P}.agent.dev-0.up.msg", f"{P}.agent.dev-0.up.chunk"):
        assert allowed(write, key, "dev-0"), key
    for key in (
        f"{P}.agent.dev-1.status",
        f"{P}.agent.dev-0.cmd",
        f"{P}.agent.dev-0.up.other",
        f"{P}.round.current",
        f"{P}.orchestrator.status",
        "fedge.v1.other.agent.dev-0.status",
        f"{P}.agent.dev-0x.status",
    ):
        assert not allowed(write, key, "dev-0"), key
    # with another client id nothing is writable
    assert not allowed(write, f"{P}.agent.dev-0.status", "dev-1")


def test_a_device_reads_only_its_own_topics_and_the_shared_ones() -> None:
    read = topic_permissions("dev-0")["read"]
    for key in (
        f"{P}.agent.dev-0.cmd",
        f"{P}.agent.dev-0.down",
        f"{P}.agent.dev-0.invite",
        f"{P}.round.current",
        f"{P}.round.async",
        f"{P}.orchestrator.status",
    ):
        assert allowed(read, key, "dev-0"), key
    for key in (f"{P}.agent.dev-1.cmd", f"{P}.agent.*.invite", f"{P}.#", f"{P}.agent.dev-0.up.msg"):
        assert not allowed(read, key, "dev-0"), key


def test_the_orchestrator_reads_and_writes_its_federation_only() -> None:
    rules = topic_permissions("fedge-orchestrator")
    for rule in rules.values():
        assert allowed(rule, f"{P}.agent.*.status", "fedge-orchestrator")
        assert allowed(rule, f"{P}.agent.dev-0.cmd", "x")
        assert not allowed(rule, "fedge.v1.other.round.current", "fedge-orchestrator")


def test_queue_permissions_name_only_the_users_session_queues() -> None:
    perms = queue_permissions("dev-0")
    assert re.search(perms["configure"], "mqtt-subscription-dev-0qos1")
    assert not re.search(perms["configure"], "mqtt-subscription-fedge-orchestratorqos1")
    assert not re.search(perms["read"], "mqtt-subscription-dev-01qos1")
    assert re.search(perms["write"], "amq.topic")


def test_names_rabbitmq_cannot_carry_are_refused() -> None:
    with pytest.raises(ConfigError, match="routing-key separator"):
        topic_permissions("dev.0")
    with pytest.raises(ConfigError, match="orchestrator user"):
        render_definitions(users={"dev-0": "pw"})


def test_password_hash_is_rabbitmqs_salted_sha256() -> None:
    salt = b"\x01\x02\x03\x04"
    decoded = base64.b64decode(password_hash("s3cret", salt))
    assert decoded == salt + hashlib.sha256(salt + b"s3cret").digest()
    assert password_hash("s3cret") != password_hash("s3cret")  # a fresh salt each time


def test_definitions_and_config(tmp_path) -> None:
    defs = render_definitions(users={"fedge-orchestrator": "a", "dev-0": "b"}, federation="f1")
    assert [u["name"] for u in defs["users"]] == ["fedge-orchestrator", "dev-0"]
    assert "fedge\\.v1\\.f1" in defs["topic_permissions"][1]["write"]
    assert defs["policies"][0]["definition"]["overflow"] == "drop-head"
    conf = render_config(mqtt_port=1884, definitions_path=tmp_path / "d.json")
    assert "mqtt.listeners.tcp.default = 127.0.0.1:1884" in conf
    assert "listeners.tcp = none" in conf and "mqtt.allow_anonymous = false" in conf

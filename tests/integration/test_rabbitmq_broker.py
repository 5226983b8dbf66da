"""The core federations on a second broker: RabbitMQ 3.10's MQTT plugin (MQTT 3.1.1).

The federation tests run an existing Mosquitto test's body unchanged against a RabbitMQ node
(tests/support/rabbitmq.py), so fedge is shown not to depend on Mosquitto's behaviour; the
others check, on RabbitMQ, what test_mosquitto_acl.py checks on Mosquitto (where RabbitMQ
differs, the test says how). One node serves the module, reset between tests (sessions and
retained messages gone). Run by scripts/test-rabbitmq.sh (``-m rabbitmq``); the main run
leaves them out (``-m "not rabbitmq"`` in pyproject.toml's addopts).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest
from support.mosquitto import make_users
from support.mqtt_peer import Peer
from support.rabbitmq import RabbitMQBroker

from fedge.protocol.blob_server import BlobServer
from fedge.protocol.chunks import decode_frame
from fedge.protocol.messages import FetchRequest, new_msg_id, parse_message
from fedge.protocol.mqtt_link import MAX_PAYLOAD_BYTES, MqttLink, MqttSettings
from fedge.protocol.transfer import PullTransfer

pytestmark = [pytest.mark.integration, pytest.mark.rabbitmq]

WAIT_S = 5.0


@pytest.fixture(scope="module")
def rabbitmq_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQBroker]:
    broker = RabbitMQBroker(tmp_path_factory.mktemp("rabbitmq"), users=make_users(5)).start()
    print(f"\nrabbitmq node started in {broker.start_seconds:.1f} s")
    yield broker
    broker.stop()


@pytest.fixture
def rabbitmq(rabbitmq_node: RabbitMQBroker) -> RabbitMQBroker:
    if not rabbitmq_node.running:  # a test that stopped it
        rabbitmq_node.start()
    rabbitmq_node.reset()
    return rabbitmq_node


@pytest.fixture(scope="module")
def digits_bundle(digits_bundle_factory):
    return digits_bundle_factory("adamw", 0.01)


# --- real federations: orchestrator and agent processes learning digits ---


def test_three_agents_three_rounds(rabbitmq, digits_federation, digits_bundle, tmp_path):
    from test_federated_loop import test_three_agents_three_rounds_on_mosquitto as body

    body(rabbitmq, digits_federation, digits_bundle, tmp_path)


def test_agent_killed_and_orchestrator_killed_mid_round(
    rabbitmq, digits_federation, digits_bundle, tmp_path
):
    """kill -9 of an agent (its Last Will), of the orchestrator (its session kept the QoS 1
    messages sent meanwhile; the restarted one fetches the idle devices' retained statuses by
    exact topic: RabbitMQ replays none to ``agent/+/status``), a restarted agent that learns
    the open round from the retained task and its retained invitation."""
    from test_orchestrator_faults import test_agent_killed_and_orchestrator_killed_mid_round as body

    body(rabbitmq, digits_federation, digits_bundle, tmp_path)


# --- the broker-level rules, as test_mosquitto_acl.py checks them on Mosquitto ---


@pytest.fixture
def connect(rabbitmq: RabbitMQBroker) -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def make(user: str | None, password: str | None = None, *, ok: bool = True) -> Peer:
        if user is not None and password is None:
            password = rabbitmq.users[user]
        peer = Peer(rabbitmq.host, rabbitmq.port, user, password)  # MQTT 3.1.1
        peers.append(peer)
        reason = peer.wait_connack()
        if ok:
            assert not reason.is_failure, f"{user} refused: {reason}\n{rabbitmq.log_tail()}"
        return peer

    yield make
    for peer in peers:
        peer.close()


def test_anonymous_and_wrong_passwords_are_refused(connect: Callable[..., Peer]) -> None:
    assert connect(None, ok=False).reason.is_failure
    assert connect("dev-0", "not-the-password", ok=False).reason.is_failure
    assert connect("dev-99", "whatever", ok=False).reason.is_failure


def test_device_cannot_publish_as_another_device(rabbitmq, connect) -> None:
    """Mosquitto drops a denied publish silently; RabbitMQ closes the publisher's connection
    (fedge's agents never publish outside their own topics, so only a forger notices)."""
    p = rabbitmq.prefix
    orch = connect("fedge-orchestrator")
    orch.subscribe(f"{p}/agent/+/status")
    for forged in (f"{p}/agent/dev-1/status", f"{p}/round/current"):
        dev0 = connect("dev-0")
        dev0.client.publish(forged, b"forged", qos=1)
        assert dev0.disconnected.wait(WAIT_S), f"{forged}: the forger is still connected"
        dev0.close()
    dev0 = connect("dev-0")
    dev0.publish(f"{p}/agent/dev-0/status", b"sentinel")
    assert orch.receive_until(b"sentinel") == [(f"{p}/agent/dev-0/status", b"sentinel")]


def test_device_cannot_read_another_devices_commands(rabbitmq, connect) -> None:
    """A forbidden subscription (another device's topic, or ``#``) closes the connection."""
    p = rabbitmq.prefix
    for topic in (f"{p}/agent/dev-0/cmd", f"{p}/#", f"{p}/agent/+/invite"):
        dev1 = connect("dev-1")
        dev1.client.subscribe(topic, qos=1)
        assert dev1.disconnected.wait(WAIT_S), f"dev-1 was allowed to subscribe to {topic}"
        dev1.close()
    dev0, dev1 = connect("dev-0"), connect("dev-1")
    dev0.subscribe(f"{p}/agent/dev-0/cmd")
    dev1.subscribe(f"{p}/agent/dev-1/cmd")
    orch = connect("fedge-orchestrator")
    orch.publish(f"{p}/agent/dev-0/cmd", b"for-dev-0")
    orch.publish(f"{p}/agent/dev-1/cmd", b"for-dev-1")
    assert dev1.receive_until(b"for-dev-1") == [(f"{p}/agent/dev-1/cmd", b"for-dev-1")]
    assert dev0.receive_until(b"for-dev-0") == [(f"{p}/agent/dev-0/cmd", b"for-dev-0")]


def test_a_device_cannot_use_another_client_id(rabbitmq, connect) -> None:
    """Mosquitto forces client id = username (``use_username_as_clientid``); RabbitMQ has no
    such option, so the generated rules only hold while they are equal: with dev-1's client
    id, dev-0 can neither publish under its own topics nor subscribe (no session queue)."""
    import paho.mqtt.client as mqtt

    for action in ("publish", "subscribe"):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-1")
        client.username_pw_set("dev-0", rabbitmq.users["dev-0"])
        gone: list[int] = []
        client.on_disconnect = lambda *_a, gone=gone: gone.append(1)
        client.connect(rabbitmq.host, rabbitmq.port)
        client.loop_start()
        try:
            if action == "publish":
                client.publish(f"{rabbitmq.prefix}/agent/dev-0/status", b"x", qos=1)
            else:
                client.subscribe(f"{rabbitmq.prefix}/agent/dev-0/cmd", qos=1)
            end = time.monotonic() + WAIT_S
            while not gone and time.monotonic() < end:
                time.sleep(0.05)
            assert gone, f"{action} with another client id was allowed"
        finally:
            client.disconnect()
            client.loop_stop()


def test_retained_messages_exact_topics_only_and_after_a_restart(rabbitmq, connect) -> None:
    """Retained messages survive a node restart and come back on an exact subscription with
    the retain flag; a wildcard subscription gets none (RabbitMQ 3.x; Mosquitto replays them),
    and a live retained message arrives unflagged (MQTT 3.1.1: no retain-as-published)."""
    p = rabbitmq.prefix
    orch = connect("fedge-orchestrator")
    orch.publish(f"{p}/round/current", b'{"round": 7}', retain=True)
    orch.close()
    rabbitmq.restart()
    wild = connect("dev-2")
    wild.subscribe(f"{p}/round/#")
    exact = connect("dev-3")
    exact.subscribe(f"{p}/round/current")
    msg = exact.messages.get(timeout=WAIT_S)
    assert (msg.topic, msg.payload, msg.retain) == (f"{p}/round/current", b'{"round": 7}', True)
    dev0 = connect("dev-0")
    dev0.publish(f"{p}/agent/dev-0/status", b"live", retain=True)
    orch = connect("fedge-orchestrator")
    orch.subscribe(f"{p}/agent/dev-0/status")  # retained copy first, flagged
    dev0.publish(f"{p}/agent/dev-0/status", b"live-2", retain=True)
    got = [orch.messages.get(timeout=WAIT_S) for _ in range(2)]
    assert [(m.payload, m.retain) for m in got] == [(b"live", True), (b"live-2", False)]
    assert wild.messages.empty(), "RabbitMQ replayed a retained message to a wildcard"


# --- large objects: chunk frames of 512 KiB and the 1 MiB payload limit, over MQTT 3.1.1 ---


def _link(broker: RabbitMQBroker, user: str, persistent: bool = False) -> MqttLink:
    settings = MqttSettings(
        url=broker.url,
        username=user,
        password=broker.users[user],
        protocol=broker.mqtt_protocol,
    )
    return MqttLink(settings, client_id=user, persistent=persistent)


def _pull(server: MqttLink, frames_topic: str, client: MqttLink, fetch_topic: str, blob: bytes):
    """``client`` pulls ``blob`` from ``server``: FetchRequests on ``fetch_topic``, chunk
    frames on ``frames_topic``, both through the broker, as agents and orchestrators do."""
    blobs = BlobServer(lambda topic, frame: server.publish(topic, frame))
    ref = blobs.offer(blob)

    def request(indices: list[int]) -> None:
        msg = FetchRequest(new_msg_id(), "dev-0", ref.sha256, indices)
        client.publish(fetch_topic, msg.encode())

    transfer = PullTransfer(ref, request)
    transfer.start()
    end = time.monotonic() + 30
    while not transfer.done:
        assert time.monotonic() < end and not transfer.failed, transfer.failed
        if (item := server.get(0.01)) is not None:
            blobs.serve(parse_message(item[1]), frames_topic)
        if (item := client.get(0.01)) is not None:
            transfer.on_chunk(decode_frame(item[1]))
        transfer.tick()
    return transfer.result, ref.chunks


def test_chunked_objects_both_ways_and_the_largest_payload(rabbitmq) -> None:
    p = rabbitmq.prefix
    orch, dev = _link(rabbitmq, "fedge-orchestrator"), _link(rabbitmq, "dev-0")
    orch.subscribe(f"{p}/agent/+/up/#")
    dev.subscribe(f"{p}/agent/dev-0/down")
    for link in (orch, dev):
        link.start()
        assert link.wait_connected(WAIT_S)
    try:
        time.sleep(0.3)  # the SUBACKs
        blob = os.urandom(5 * 512 * 1024 + 1234)  # 6 chunks, the last one short
        # down: a bundle or the global parameters; up: a delta the orchestrator fetches
        got, chunks = _pull(orch, f"{p}/agent/dev-0/down", dev, f"{p}/agent/dev-0/up/msg", blob)
        assert got == blob and chunks == 6
        got, _ = _pull(dev, f"{p}/agent/dev-0/up/chunk", orch, f"{p}/agent/dev-0/down", blob)
        assert got == blob
        big = os.urandom(MAX_PAYLOAD_BYTES)  # fedge's own payload limit, sent whole
        orch.publish(f"{p}/agent/dev-0/down", big)
        item = dev.get(WAIT_S)
        assert item is not None and item[1] == big
    finally:
        orch.stop()
        dev.stop()


def test_an_agent_outside_its_permissions_says_what_to_check(
    rabbitmq, digits_federation, tmp_path
) -> None:
    """RabbitMQ closes the connection of a client that subscribes to a topic it may not read;
    an agent configured for another federation than the broker's rules reconnects, is closed
    again, and must say to check the topic permissions, not only "another process"."""
    from support.fleet import Fleet, agent_config

    fleet = Fleet(tmp_path)
    cfg = agent_config("dev-0", rabbitmq, digits_federation.device_paths[0], tmp_path / "s0")
    cfg["federation"] = "not-the-brokers"
    try:
        fleet.start("dev-0", "agent", cfg)
        end = time.monotonic() + 60
        while "check the user's topic permissions" not in fleet.logs("dev-0"):
            assert time.monotonic() < end, fleet.all_logs()
            time.sleep(0.2)
    finally:
        fleet.stop_all()


def test_what_stays_different_mqtt_5_and_client_id_takeover(rabbitmq, connect) -> None:
    """Two limits fedge cannot fix (docs/brokers.md): RabbitMQ 3.10 refuses an MQTT 5
    CONNECT (every process needs mqtt.protocol = "3.1.1"), and a device's credentials with
    another client's id take that connection over (Mosquitto forces client id = username)."""
    import paho.mqtt.client as mqtt

    v5 = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-4", protocol=mqtt.MQTTv5)
    v5.username_pw_set("dev-4", rabbitmq.users["dev-4"])
    acks: list[object] = []
    v5.on_connect = lambda _c, _u, _f, reason, _p: acks.append(reason)
    v5.connect(rabbitmq.host, rabbitmq.port)
    v5.loop_start()
    time.sleep(2.0)
    v5.disconnect()
    v5.loop_stop()
    assert not any(not getattr(r, "is_failure", True) for r in acks), acks
    orch = connect("fedge-orchestrator")
    intruder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fedge-orchestrator")
    intruder.username_pw_set("dev-0", rabbitmq.users["dev-0"])
    intruder.connect(rabbitmq.host, rabbitmq.port)
    intruder.loop_start()
    try:
        assert orch.disconnected.wait(WAIT_S), "the orchestrator kept its connection"
    finally:
        intruder.disconnect()
        intruder.loop_stop()


def test_a_device_added_with_rabbitmqctl_gets_the_same_rules(rabbitmq, connect) -> None:
    """The rabbitmqctl commands of docs/brokers.md (``RabbitMQBroker.add_user``) on a running
    node: the new device writes its own status and cannot write another's."""
    if "dev-9" not in rabbitmq.users:
        rabbitmq.add_user("dev-9", "pw-of-dev-9")
    p = rabbitmq.prefix
    orch = connect("fedge-orchestrator")
    orch.subscribe(f"{p}/agent/+/status")
    dev9 = connect("dev-9")
    dev9.publish(f"{p}/agent/dev-9/status", b"dev-9 online")
    assert orch.receive_until(b"dev-9 online") == [(f"{p}/agent/dev-9/status", b"dev-9 online")]
    dev9.client.publish(f"{p}/agent/dev-0/status", b"forged", qos=1)
    assert dev9.disconnected.wait(WAIT_S), "dev-9 wrote dev-0's status"

"""The in-memory transport keeps MQTT's semantics the round logic relies on."""

from fedge.protocol.mqtt_link import MqttLink
from fedge.protocol.transport import InMemoryBroker, Transport, topic_matches


def test_topic_filters_match_like_mqtt() -> None:
    assert topic_matches("a/+/c", "a/b/c")
    assert not topic_matches("a/+/c", "a/b/d")
    assert topic_matches("a/#", "a/b/c")
    assert topic_matches("a/#", "a")
    assert not topic_matches("a/+", "a/b/c")
    assert not topic_matches("a/b", "a/b/c")


def test_retained_messages_reach_late_subscribers_and_empty_payload_clears() -> None:
    broker = InMemoryBroker()
    pub = broker.client("pub")
    pub.start()
    pub.publish("f/round/current", b"task", retain=True)
    late = broker.client("late")
    late.subscribe("f/round/#")
    late.start()
    assert late.get(0) == ("f/round/current", b"task")
    pub.publish("f/round/current", b"", retain=True)
    assert late.get(0) == ("f/round/current", b"")
    later = broker.client("later")
    later.subscribe("f/round/#")
    later.start()
    assert later.get(0) is None and later.pending() == 0


def test_stop_publishes_the_final_message_retained() -> None:
    broker = InMemoryBroker()
    watcher = broker.client("w")
    watcher.subscribe("f/agent/+/status")
    watcher.start()
    agent = broker.client("a")
    agent.start()
    agent.stop(final=("f/agent/a/status", b"offline"))
    assert watcher.get(0) == ("f/agent/a/status", b"offline")
    assert broker.retained["f/agent/a/status"] == b"offline"
    assert not agent.connected


def test_both_implementations_satisfy_the_protocol() -> None:
    assert isinstance(InMemoryBroker().client("x"), Transport)
    assert all(hasattr(MqttLink, name) for name in ("pending", "get", "publish", "stop"))

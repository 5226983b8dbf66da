"""Connection failures described for people, and the session-takeover heuristic."""

from __future__ import annotations

import ssl

from fedge.protocol.mqtt_failures import (
    SESSION_TAKEN_OVER,
    SHORT_CONNECTION_S,
    TAKEOVER_MAX_DELAY_S,
    TakeoverWatch,
    describe_connect_error,
    describe_refusal,
    describe_tls_alert,
)


def test_reason_142_is_a_takeover_at_once_and_backs_off() -> None:
    watch = TakeoverWatch()
    assert watch.on_disconnect(SESSION_TAKEN_OVER, 1.0, requested=False)
    first = watch.reconnect_delay()
    assert watch.on_disconnect(SESSION_TAKEN_OVER, 1.0, requested=False)
    assert watch.reconnect_delay() > first >= 5
    for _ in range(20):
        watch.on_disconnect(SESSION_TAKEN_OVER, 1.0, requested=False)
    assert watch.reconnect_delay() <= TAKEOVER_MAX_DELAY_S * 1.5


def test_short_drops_count_only_in_a_row_and_a_held_connection_resets() -> None:
    watch = TakeoverWatch()
    assert not watch.on_disconnect(128, 2.0, requested=False)  # one drop: a broker restart?
    assert watch.reconnect_delay() == 0
    assert watch.on_disconnect(128, 2.0, requested=False)  # again at once: a takeover
    assert not watch.on_disconnect(128, SHORT_CONNECTION_S + 1, requested=False)
    assert watch.drops == 0 and watch.reconnect_delay() == 0
    assert not watch.on_disconnect(SESSION_TAKEN_OVER, 1.0, requested=True)  # our own stop


def test_descriptions_name_the_reason_and_the_fix() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "certificate has expired"
    security, text = describe_connect_error(exc, "b:8883")
    assert security and "expired" in text and "NTP" in text
    security, text = describe_connect_error(ConnectionRefusedError(111, "refused"), "b:8883")
    assert not security and "refused" in text
    auth, text = describe_refusal(134, "Bad user name or password", "dev-0")
    assert auth and "refused dev-0" in text and "mqtt.username/password" in text
    security, text = describe_tls_alert(
        "failed to receive on socket: [SSL: SSLV3_ALERT_CERTIFICATE_REVOKED] alert", "b:8884"
    )
    assert security and "revoked" in text

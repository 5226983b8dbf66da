"""The asynchronous-run wire messages parse, round-trip and are bounded like the others."""

from __future__ import annotations

import pytest

from fedge.protocol.async_messages import AsyncAnnounce, SlotRequest
from fedge.protocol.errors import MessageError
from fedge.protocol.messages import parse_message


def test_round_trip():
    a = AsyncAnnounce("run", 3, "open", "ab" * 32, slots_free=2, training=5, retry_after=0.5)
    assert parse_message(a.encode(), AsyncAnnounce) == a
    r = SlotRequest("m1", "dev-0", "run")
    assert parse_message(r.encode(), SlotRequest) == r


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (
            b'{"type":"async","run_id":"r","model_version":-1,"state":"open","bundle_hash":""}',
            ">= 0",
        ),
        (
            b'{"type":"async","run_id":"r","model_version":1,"state":"paused","bundle_hash":""}',
            "one of",
        ),
        (
            b'{"type":"async","run_id":"r","model_version":1,"state":"open","bundle_hash":"",'
            b'"slots_free":-3}',
            "slots_free",
        ),
        (b'{"type":"slot_request","msg_id":"","agent":"a","run_id":"r"}', "msg_id"),
        (b'{"type":"slot_request","msg_id":"x","agent":"a/b","run_id":"r"}', "agent"),
    ],
)
def test_out_of_bounds_fields_are_refused(payload, problem):
    with pytest.raises(MessageError, match=problem):
        parse_message(payload)

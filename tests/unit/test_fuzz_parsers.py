"""Fuzzing what crosses the wire: random and mutated bytes never crash a parser or a dispatcher.

Each parser either returns a valid object or raises a ``FedgeError`` subclass. The agent's and
the orchestrator's dispatch functions (real objects, built without a network connection)
swallow-and-log bad input and change no state when the input is invalid.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.toy_bundle import write_toy_bundle

from fedge.protocol.chunks import blob_ref, chunk_bytes, decode_frame, encode_frame
from fedge.protocol.compression import decode_delta
from fedge.protocol.errors import FedgeError
from fedge.protocol.messages import (
    Ack,
    BlobRef,
    EvalReport,
    FetchRequest,
    RoundAbort,
    RoundEvent,
    RoundTask,
    Status,
    TrainConfig,
    UpdateOffer,
    parse_message,
)
from fedge.protocol.tensors import decode_tensors, encode_tensors

FUZZ = settings(
    max_examples=400,
    deadline=None,
    database=None,
    derandomize=True,  # the same inputs in every CI run; a failure names its example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SHA = "a" * 64
REF = BlobRef(SHA, 10, 1)
SEED_MESSAGES = [
    Status(agent="dev-0", state="idle", backend="ort-training", num_samples=5, ts=1.0),
    RoundTask(
        run_id="r1",
        round=1,
        model_version=0,
        state="open",
        bundle_hash=SHA,
        bundle=REF,
        params=REF,
        participants=["dev-0", "dev-1"],
        config=TrainConfig(clip_norm=1.0, noise_multiplier=0.5),
        deadline=2e9,
    ),
    FetchRequest(msg_id="m1", agent="dev-0", sha256=SHA, indices=[0, 1]),
    UpdateOffer(
        msg_id="m2",
        agent="dev-0",
        run_id="r1",
        round=1,
        model_version=0,
        blob=REF,
        num_samples=3,
        metrics={"loss": 0.5},
    ),  # fmt: skip
    Ack(msg_id="m3", agent="dev-0", run_id="r1", round=1, sha256=SHA, accepted=True),
    RoundAbort(msg_id="m4", agent="dev-0", run_id="r1", round=1, reason="busy"),
    EvalReport(
        msg_id="m5",
        agent="dev-0",
        run_id="r1",
        round=1,
        model_version=0,
        num_samples=4,
        metrics={"val_loss": 0.25},
    ),  # fmt: skip
    RoundEvent(run_id="r1", kind="round_committed", round=1, model_version=1, ts=1.7e9),
]
SEED_PAYLOADS = [m.encode() for m in SEED_MESSAGES]
TENSORS = encode_tensors({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
FRAME = encode_frame(blob_ref(TENSORS), 0, chunk_bytes(TENSORS, 0))
NESTED = [b"[" * 60000, b'{"type":"status","agent":' + b"[" * 30000, b'{"a":' * 12000]

# Full range: unbounded integers, non-finite floats, huge strings and lists, deep nesting.
huge_values = st.one_of(
    st.integers(),
    st.integers(min_value=2**62, max_value=2**80),
    st.integers(max_value=-(2**62)),
    st.sampled_from([2**63, 2**63 - 1, -(2**63) - 1, 10**20, 2**70, 10**400]),
    st.floats(),
    st.integers(0, 70_000).map(lambda n: "x" * n),
    st.integers(0, 20_000).map(lambda n: [1] * n),
    st.integers(0, 5_000).map(lambda n: {f"k{i}": 1.0 for i in range(n)}),
    st.integers(1, 3_000).map(lambda n: functools.reduce(lambda acc, _: [acc], range(n), 0)),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with byte-level edits: flips, truncation, insertion, duplication."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "dup"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 32))]
    return bytes(data)


@st.composite
def json_mutated(draw: st.DrawFn) -> bytes:
    """A valid control message with one field replaced, removed or added (type confusion)."""
    obj: dict[str, Any] = json.loads(draw(st.sampled_from(SEED_PAYLOADS)))
    key = draw(st.sampled_from(sorted(obj)))
    op = draw(st.sampled_from(["replace", "delete", "add"]))
    if op == "replace":
        obj[key] = draw(json_values)
    elif op == "delete":
        del obj[key]
    else:
        obj[draw(st.text(max_size=8))] = draw(json_values)
    return json.dumps(obj).encode()


def _paths(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in obj.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out.extend(_paths(value, (*prefix, key)))
    return out


@st.composite
def field_mutated(draw: st.DrawFn) -> bytes:
    """A valid control message with one field, nested ones too, set to a full-range value."""
    obj: dict[str, Any] = json.loads(draw(st.sampled_from(SEED_PAYLOADS)))
    *parents, key = draw(st.sampled_from([p for p in _paths(obj) if p != ("type",)]))
    target = obj
    for part in parents:
        target = target[part]
    target[key] = draw(huge_values)
    try:
        return json.dumps(obj).encode()
    except RecursionError:  # json.dumps of a very deep value: send the field as 0 instead
        # (in its own parent: a nested field, e.g. round.config.weight_decay, used to stay deep
        # and fail the dump again)
        target[key] = 0
        return json.dumps(obj).encode()


wire_bytes = st.one_of(
    field_mutated(),
    st.binary(max_size=300),
    mutated(SEED_PAYLOADS),
    json_mutated(),
    mutated([FRAME]),
    mutated([TENSORS]),
)


def _only_fedge_errors(fn: Any, payload: bytes) -> Any:
    try:
        return fn(payload)
    except FedgeError:
        return None


@FUZZ
@given(payload=wire_bytes)
def test_parse_message_never_crashes(payload: bytes) -> None:
    msg = _only_fedge_errors(parse_message, payload)
    if msg is not None:  # what parses is in bounds, re-encodes and parses to the same message
        _within_wire_bounds(msg)
        assert parse_message(msg.encode()) == msg


def _within_wire_bounds(value: Any) -> None:
    """Every number a parsed message holds fits SQLite and numpy: int64, finite floats."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _within_wire_bounds(getattr(value, f.name))
    elif isinstance(value, dict):
        for k, v in value.items():
            _within_wire_bounds(k)
            _within_wire_bounds(v)
    elif isinstance(value, list):
        for v in value:
            _within_wire_bounds(v)
    elif isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        assert -(2**63) <= value < 2**63
    elif isinstance(value, str):
        assert len(value) <= 4096


@settings(FUZZ, max_examples=400)
@given(payload=field_mutated())
def test_parse_message_bounds_every_field(payload: bytes) -> None:
    msg = _only_fedge_errors(parse_message, payload)
    if msg is not None:
        _within_wire_bounds(msg)
        assert parse_message(msg.encode()) == msg


@FUZZ
@given(payload=wire_bytes)
def test_decode_frame_never_crashes(payload: bytes) -> None:
    chunk = _only_fedge_errors(decode_frame, payload)
    if chunk is not None:  # what is accepted is self-consistent
        assert 0 <= chunk.index < chunk.count and len(chunk.data) <= chunk.size


@FUZZ
@given(payload=wire_bytes)
def test_decode_tensors_and_delta_never_crash(payload: bytes) -> None:
    _only_fedge_errors(decode_tensors, payload)
    _only_fedge_errors(decode_delta, payload)


@pytest.mark.parametrize("payload", NESTED)
def test_deeply_nested_json_is_a_message_error(payload: bytes) -> None:
    # Regression: json's RecursionError escaped parse_message and decode_frame, so one
    # 60 KB publish by any device crashed the orchestrator's loop.
    from fedge.protocol.errors import MessageError, TransferError

    with pytest.raises(MessageError, match="not valid JSON"):
        parse_message(payload)
    header = payload[:65535]
    frame = FRAME[:4] + len(header).to_bytes(2, "big") + header  # FRAME[:4] is the magic
    with pytest.raises(TransferError, match="malformed"):
        decode_frame(frame)


# ---- the dispatchers, built for real without a broker connection ----


def _db_dump(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def _valid(kind: str, payload: bytes) -> bool:
    """Whether the payload is well-formed for its topic (then state may change)."""
    try:
        if kind in ("down", "up/chunk"):
            decode_frame(payload)
        elif payload or kind != "status":
            parse_message(payload)
        return True
    except FedgeError:
        return False


@pytest.fixture
def orchestrator(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from fedge.orchestrator.config import OrchestratorConfig
    from fedge.orchestrator.server import Orchestrator
    from fedge.protocol.transport import InMemoryBroker

    cfg = OrchestratorConfig(
        bundle=str(write_toy_bundle(tmp_path / "bundle")), database=str(tmp_path / "orch.db")
    )
    cfg.limits.message_burst = 10**6  # every example reaches the parsers, not the rate limit
    orch = Orchestrator(cfg, transport=InMemoryBroker().client("orch"))
    orch._resume_or_create_run()
    caplog.set_level(logging.WARNING)
    yield orch
    orch.store.close()


orchestrator_topics = st.sampled_from(
    [
        "fedge/v1/demo/agent/dev-0/status",
        "fedge/v1/demo/agent/dev-0/up/msg",
        "fedge/v1/demo/agent/dev-0/up/chunk",
        "fedge/v1/demo/agent/dev-0/other",
        "fedge/v1/demo/agent//up/msg",
        "fedge/v1/other/agent/dev-0/up/msg",
    ]
)


@settings(FUZZ, max_examples=200)
@given(topic=orchestrator_topics, payload=wire_bytes)
def test_orchestrator_dispatch_survives_garbage(orchestrator, topic: str, payload: bytes) -> None:
    db = Path(orchestrator.cfg.database)
    before = (_db_dump(db), orchestrator.current, dict(orchestrator.intake.uploads))
    orchestrator._dispatch(topic, payload)  # must not raise
    kind = topic.rsplit("dev-0/", 1)[-1]
    if not _valid(kind, payload):
        after = (_db_dump(db), orchestrator.current, dict(orchestrator.intake.uploads))
        assert after == before, f"invalid input on {topic} changed the orchestrator's state"


def _no_training(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("dispatching a message must never start training")


class _NoTraining:
    """The backend slot of an agent under fuzzing: dispatch must never reach it.

    (The real backend would import ONNX Runtime, which blocks torch for this process.)
    """

    name = "none"
    load = set_parameters = get_parameters = train = evaluate = staticmethod(_no_training)


@pytest.fixture
def agent(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from fedge.agent.config import AgentConfig
    from fedge.agent.daemon import Agent
    from fedge.protocol.transport import InMemoryBroker

    cfg = AgentConfig(id="dev-0", state_dir=str(tmp_path / "state"))
    agent = Agent(cfg, transport=InMemoryBroker().client("dev-0"), backend=_NoTraining())
    caplog.set_level(logging.WARNING)
    yield agent
    agent.state.close()


agent_topics = st.sampled_from(
    [
        "fedge/v1/demo/round/current",
        "fedge/v1/demo/agent/dev-0/cmd",
        "fedge/v1/demo/agent/dev-0/down",
    ]
)


@settings(FUZZ, max_examples=200)
@given(topic=agent_topics, payload=wire_bytes)
def test_agent_dispatch_survives_garbage(agent, topic: str, payload: bytes) -> None:
    db = agent.cfg.state_path / "agent.db"
    before = (_db_dump(db), agent.task, dict(agent.fetches.transfers), dict(agent.fetches.blobs))
    agent.handle(topic, payload)  # must not raise
    kind = topic.rsplit("/", 1)[-1]
    valid = _valid("down" if kind == "down" else "msg", payload) and (
        kind != "current" or not payload or isinstance(parse_message(payload), RoundTask)
    )
    if not valid:
        after = (_db_dump(db), agent.task, dict(agent.fetches.transfers), dict(agent.fetches.blobs))
        assert after == before, f"invalid input on {topic} changed the agent's state"


@pytest.mark.parametrize("payload", NESTED)
def test_nested_json_does_not_crash_the_dispatchers(orchestrator, agent, payload: bytes) -> None:
    orchestrator._dispatch("fedge/v1/demo/agent/dev-0/up/msg", payload)
    orchestrator._dispatch("fedge/v1/demo/agent/dev-0/status", payload)
    agent.handle("fedge/v1/demo/round/current", payload)
    agent.handle("fedge/v1/demo/agent/dev-0/cmd", payload)


def test_bad_input_is_logged_clearly(agent, caplog: pytest.LogCaptureFixture) -> None:
    agent.handle("fedge/v1/demo/agent/dev-0/cmd", b'{"type": "ack", "agent": 5}')
    assert any(
        "ignored a bad message on fedge/v1/demo/agent/dev-0/cmd" in r.getMessage()
        for r in caplog.records
    )

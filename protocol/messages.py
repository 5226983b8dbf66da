"""Control messages on the wire: small JSON objects, validated field by field on receipt.

Every message names its ``type``; those that ask for something carry a ``msg_id`` so that
receivers can drop the duplicates QoS 1 delivers after reconnects. Anything received is
untrusted: ``parse_message`` checks types, ranges and sizes and raises MessageError with the
first problem, never a bare KeyError.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import MessageError
from .topics import validate_name

MAX_CONTROL_BYTES = 64 * 1024  # control messages are small; blobs travel as chunks
_SHA = frozenset("0123456789abcdef")


def new_msg_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class BlobRef:
    """Identity of a chunked object: its sha256, size in bytes and number of chunks."""

    sha256: str
    size: int
    chunks: int

    def validate(self) -> None:
        if len(self.sha256) != 64 or not set(self.sha256) <= _SHA:
            raise MessageError(f"blob sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if self.size < 0 or self.chunks < 0 or (self.size > 0) != (self.chunks > 0):
            raise MessageError(f"blob size {self.size} / chunks {self.chunks} are inconsistent")


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["type"] = self.TYPE
        return out

    def encode(self) -> bytes:
        data = json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()
        if len(data) > MAX_CONTROL_BYTES:
            raise MessageError(
                f"{self.TYPE} message is {len(data)} bytes; limit {MAX_CONTROL_BYTES}"
            )
        return data

    def validate(self) -> None:  # overridden where fields have extra rules
        """Check rules beyond field types."""


@dataclass(frozen=True)
class Status(Message):
    """Agent -> everyone (retained). ``state`` is online, training, idle, ineligible or offline."""

    TYPE: ClassVar[str] = "status"
    agent: str
    state: str
    backend: str = ""
    num_samples: int = 0
    eligible: bool = True
    reason: str = ""
    version: str = ""
    ts: float = 0.0

    STATES: ClassVar[frozenset[str]] = frozenset(
        {"online", "idle", "training", "uploading", "ineligible", "offline"}
    )

    def validate(self) -> None:
        validate_name(self.agent)
        if self.state not in self.STATES:
            raise MessageError(f"status state {self.state!r} unknown; one of {sorted(self.STATES)}")


@dataclass(frozen=True)
class TrainConfig:
    """What an agent does in a round (sent by the orchestrator)."""

    local_epochs: int = 1
    batch_size: int = 32
    max_samples: int = 0  # 0 = all local rows
    seed: int = 0
    learning_rate: float = 0.0  # 0 = the bundle's own
    proximal_mu: float = 0.0  # FedProx: pull local weights towards the round's global model
    compression: str = ""  # "" (none) | "int8" | "topk": how the agent encodes its delta
    topk_fraction: float = 0.0  # for "topk": the share of entries kept (with error feedback)
    clip_norm: float = 0.0  # client-level DP: clip the delta to this L2 norm (0 = off)
    noise_multiplier: float = 0.0  # client-level DP: Gaussian noise std = multiplier * clip_norm
    evaluate_only: bool = False  # federated evaluation: evaluate the global model, no training

    COMPRESSIONS: ClassVar[frozenset[str]] = frozenset({"", "int8", "topk"})

    def validate(self) -> None:
        if not 1 <= self.local_epochs <= 1000 or not 1 <= self.batch_size <= 65536:
            raise MessageError("train config local_epochs/batch_size out of range")
        if self.compression not in self.COMPRESSIONS:
            raise MessageError(f"unknown compression {self.compression!r}")
        for name in (
            "learning_rate",
            "proximal_mu",
            "topk_fraction",
            "clip_norm",
            "noise_multiplier",
        ):
            if getattr(self, name) < 0:
                raise MessageError(f"train config {name} must be >= 0")
        if self.topk_fraction > 1:
            raise MessageError("train config topk_fraction must be <= 1")


@dataclass(frozen=True)
class RoundTask(Message):
    """Orchestrator -> everyone (retained on round/current): the open round, or none."""

    TYPE: ClassVar[str] = "round"
    run_id: str
    round: int
    model_version: int
    state: str  # open | closed | finished
    bundle_hash: str
    bundle: BlobRef
    params: BlobRef
    participants: list[str] = field(default_factory=list)
    config: TrainConfig = field(default_factory=TrainConfig)
    deadline: float = 0.0
    # pace steering: devices not in this round (or done with it) check back after this many s
    retry_after: float = 0.0

    def validate(self) -> None:
        if self.state not in ("open", "closed", "finished"):
            raise MessageError(f"round state {self.state!r} unknown")
        if self.round < 0 or self.model_version < 0:
            raise MessageError("round and model_version must be >= 0")
        self.bundle.validate()
        self.params.validate()
        self.config.validate()
        for p in self.participants:
            validate_name(p)


@dataclass(frozen=True)
class FetchRequest(Message):
    """Either side asks the other for chunks of an object it announced."""

    TYPE: ClassVar[str] = "fetch"
    msg_id: str
    agent: str
    sha256: str
    indices: list[int]

    def validate(self) -> None:
        validate_name(self.agent)
        BlobRef(self.sha256, 1, 1).validate()
        if not self.indices or len(self.indices) > 256 or min(self.indices) < 0:
            raise MessageError("fetch indices must be 1-256 non-negative chunk numbers")


@dataclass(frozen=True)
class UpdateOffer(Message):
    """Agent -> orchestrator: a finished round's delta is ready to be fetched."""

    TYPE: ClassVar[str] = "update"
    msg_id: str
    agent: str
    run_id: str
    round: int
    model_version: int
    blob: BlobRef
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        validate_name(self.agent)
        self.blob.validate()
        if self.num_samples <= 0:
            raise MessageError(f"update num_samples must be > 0, got {self.num_samples}")
        for k, v in self.metrics.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise MessageError(f"metric {k!r} must be a finite number, got {v!r}")


@dataclass(frozen=True)
class Ack(Message):
    """Orchestrator -> agent: an update was accepted (or rejected, with the reason)."""

    TYPE: ClassVar[str] = "ack"
    msg_id: str
    agent: str
    run_id: str
    round: int
    sha256: str
    accepted: bool
    reason: str = ""


@dataclass(frozen=True)
class RoundAbort(Message):
    """Agent -> orchestrator: it will not report this round (ineligible, error), and why."""

    TYPE: ClassVar[str] = "abort"
    msg_id: str
    agent: str
    run_id: str
    round: int
    reason: str


@dataclass(frozen=True)
class EvalReport(Message):
    """Agent -> orchestrator: metrics of the round's global model on the device's validation
    rows (federated evaluation round). ``num_samples`` weighs them in the federation's mean."""

    TYPE: ClassVar[str] = "eval"
    msg_id: str
    agent: str
    run_id: str
    round: int
    model_version: int
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        validate_name(self.agent)
        if self.num_samples <= 0:
            raise MessageError(f"eval num_samples must be > 0, got {self.num_samples}")
        if self.round < 0 or self.model_version < 0:
            raise MessageError("round and model_version must be >= 0")


@dataclass(frozen=True)
class RoundEvent(Message):
    """Orchestrator -> watchers (orchestrator/events): progress a person can follow."""

    TYPE: ClassVar[str] = "event"
    run_id: str
    kind: str  # round_started | round_committed | round_evaluated | round_abandoned | run_finished
    round: int
    model_version: int
    reports: int = 0
    participants: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    ts: float = 0.0


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Status,
        RoundTask,
        FetchRequest,
        UpdateOffer,
        Ack,
        RoundAbort,
        EvalReport,
        RoundEvent,
    )
}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, where)
            except MessageError:
                continue
        raise MessageError(f"{where}: unexpected value {value!r}")
    if hint is type(None):
        if value is None:
            return None
        raise MessageError(f"{where}: expected null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise MessageError(f"{where}: expected true/false, got {type(value).__name__}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise MessageError(f"{where}: expected an integer, got {type(value).__name__}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise MessageError(f"{where}: expected a finite number, got {value!r}")
    if hint is str:
        if isinstance(value, str) and len(value) <= 4096:
            return value
        raise MessageError(
            f"{where}: expected a string (<= 4096 chars), got {type(value).__name__}"
        )
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list) or len(value) > 100_000:
            raise MessageError(f"{where}: expected a list")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        if not isinstance(value, dict) or len(value) > 1000:
            raise MessageError(f"{where}: expected an object")
        return {
            _coerce(k, key_t, where): _coerce(v, val_t, f"{where}.{k}") for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    raise MessageError(f"{where}: unsupported field type {hint!r}")  # pragma: no cover


def _build(cls: Any, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise MessageError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MessageError(f"{where}: missing field '{f.name}'")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def parse_message(payload: bytes, expected: type[Message] | None = None) -> Message:
    """Decode and validate one control message; raise MessageError saying what is wrong."""
    if len(payload) > MAX_CONTROL_BYTES:
        raise MessageError(f"control message is {len(payload)} bytes; limit {MAX_CONTROL_BYTES}")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # deep nesting
        raise MessageError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError(f"expected a JSON object, got {type(data).__name__}")
    kind = data.pop("type", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError(f"unknown message type {kind!r}; known: {sorted(MESSAGE_TYPES)}")
    if expected is not None and cls is not expected:
        raise MessageError(f"expected a {expected.TYPE!r} message here, got {kind!r}")
    return _build(cls, data, kind)

"""Typed, bounded fields: one checker for wire messages and configuration.

A dataclass declares each field's bounds in its annotation::

    num_samples: Annotated[int, Range(0, MAX_SAMPLES)] = 0
    state: Annotated[str, OneOf("open", "closed")] = "open"
    indices: Annotated[list[ChunkIndex], Len(1, 256)]

``coerce`` checks one value against such a hint and ``build`` turns a JSON/TOML object into the
dataclass; both raise the caller's error class (MessageError for the wire, ConfigError for
settings) naming the field, the limit and the value: ``status.num_samples must be <=
1000000000, got 100000000000000000000``. What no annotation bounds is still bounded: integers to
int64 (what SQLite and numpy hold), floats to finite values, strings to ``DEFAULT_MAX_STR``
characters where the caller asks for it, lists and objects to ``DEFAULT_MAX_ITEMS`` entries.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from .errors import FedgeError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_ROUND = 1_000_000_000  # rounds and model versions: decades of one round a second
MAX_SAMPLES = 1_000_000_000  # rows on one device (also: a round's weight)
MAX_OBJECT_BYTES = 512 * 1024 * 1024  # one chunked object (bundle, parameters, delta)
MAX_CHUNKS = MAX_OBJECT_BYTES  # a chunk holds at least one byte; BlobRef also checks <= size
MAX_TIMESTAMP = 1e10  # seconds since 1970 (year 2286): wall-clock stamps and deadlines
MAX_SECONDS = 30 * 24 * 3600.0  # one duration (deadline, retry hint, grace): 30 days
# a small object (global parameters, a delta) travels inline/pushed up to this size, not pulled
MAX_INLINE_BYTES = 256 * 1024
MAX_INLINE_B64 = 4 * -(-MAX_INLINE_BYTES // 3)  # its base64 text in a JSON message
MAX_PARTICIPANTS = 10_000  # invited devices named in one RoundTask (the 64 KiB limit binds first)
MAX_METRICS = 64  # entries in one metrics object
# features of one sample that federated standardization covers: a round task carries two
# float64 lists of this length and a statistics report three; 512 keeps both far below the
# 64 KiB control-message limit (worst case ~25 KB / ~37 KB, tests/unit/test_standardization.py)
MAX_FEATURES = 512
MAX_NAME = 64  # ids, names, metric keys
MAX_REASON = 4096  # free-text reasons (agents cut theirs to 500-1000; acks carry ours)
DEFAULT_MAX_STR = 4096
DEFAULT_MAX_ITEMS = 100_000


@dataclass(frozen=True)
class Range:
    """Inclusive numeric bounds; ``None`` leaves that side open (int64 / finite still hold)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # True: the value must be > lo, not >= lo
    hi_open: bool = False


@dataclass(frozen=True)
class Len:
    """Bounds on the length of a string, list or object."""

    lo: int = 0
    hi: int | None = None


@dataclass(frozen=True)
class OneOf:
    """The value must be one of these (strings, numbers)."""

    values: tuple[Any, ...]

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", tuple(values))


@dataclass(frozen=True)
class Match:
    """A string matching ``pattern`` in full; ``what`` says in words what is expected."""

    pattern: str
    what: str


@dataclass(frozen=True)
class Base64Text:
    """RFC 4648 base64 text: alphabet characters, then at most two ``=`` (what the regex
    ``[A-Za-z0-9+/]*={0,2}`` accepts). Checked with ``bytes.translate``: an inline delta is
    ~26,000 characters, where the regex took ~0.2 ms of the orchestrator's time per offer."""

    what: str = "base64 (RFC 4648) text"


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def is_base64_text(text: str) -> bool:
    """Whether ``text`` is alphabet characters followed by at most two ``=``."""
    if not text.isascii():
        return False
    data = text.encode("ascii")
    body = data.rstrip(b"=")
    return len(data) - len(body) <= 2 and not body.translate(None, _B64_ALPHABET)


HEX64 = Match(r"[0-9a-f]{64}", "64 lowercase hex digits")
NAME = Match(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "1-64 letters, digits, '_', '-' or '.'")

# Shared field types: what the wire carries and what configuration feeds into it use the same
# bounds, so a config the orchestrator accepts never produces a task its agents refuse.
Round = Annotated[int, Range(0, MAX_ROUND)]
Version = Annotated[int, Range(0, MAX_ROUND)]
Samples = Annotated[int, Range(0, MAX_SAMPLES)]
Timestamp = Annotated[float, Range(0, MAX_TIMESTAMP)]
Seconds = Annotated[float, Range(0, MAX_SECONDS)]
Fraction = Annotated[float, Range(0, 1)]
NonNegative = Annotated[float, Range(0, None)]
Positive = Annotated[float, Range(0, None, lo_open=True)]
Port = Annotated[int, Range(0, 65535)]
Name = Annotated[str, Len(0, MAX_NAME)]
Reason = Annotated[str, Len(0, MAX_REASON)]
Sha256 = Annotated[str, HEX64]
AgentId = Annotated[str, NAME]
InlineSize = Annotated[int, Range(0, MAX_INLINE_BYTES)]
Base64 = Annotated[str, Len(0, MAX_INLINE_B64), Base64Text()]
# The client optimizer a round task names ("": the bundle's default, its first) and its weight
# decay (-1: the bundle's own value). The optimizer must be one the bundle carries.
OPTIMIZER_NAMES = ("sgd", "adamw")
OptimizerName = Annotated[str, OneOf("", *OPTIMIZER_NAMES)]
MAX_WEIGHT_DECAY = 10.0  # decoupled decay shrinks weights by lr x this per step
WeightDecay = Annotated[float, Range(-1, MAX_WEIGHT_DECAY)]
Metrics = Annotated[dict[Annotated[str, Len(1, MAX_NAME)], float], Len(0, MAX_METRICS)]


def _number(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} chars)"


def _check_constraints(value: Any, constraints: tuple[Any, ...], where: str, error: type) -> None:
    for c in constraints:
        if isinstance(c, Range):
            if c.lo is not None and (value <= c.lo if c.lo_open else value < c.lo):
                sign = ">" if c.lo_open else ">="
                raise error(f"{where} must be {sign} {c.lo}, got {_number(value)}")
            if c.hi is not None and (value >= c.hi if c.hi_open else value > c.hi):
                sign = "<" if c.hi_open else "<="
                raise error(f"{where} must be {sign} {c.hi}, got {_number(value)}")
        elif isinstance(c, Len):
            n, unit = len(value), "chars" if isinstance(value, str) else "entries"
            if n < c.lo:
                raise error(f"{where} must have at least {c.lo} {unit}, got {n}")
            if c.hi is not None and n > c.hi:
                raise error(f"{where} must have at most {c.hi} {unit}, got {n}")
        elif isinstance(c, OneOf):
            if value not in c.values:
                raise error(
                    f"{where} must be one of {', '.join(map(repr, c.values))}; got {_number(value)}"
                )
        elif isinstance(c, Base64Text):
            if not isinstance(value, str) or not is_base64_text(value):
                raise error(f"{where} must be {c.what}, got {_number(value)}")
        elif isinstance(c, Match):
            if not isinstance(value, str) or not re.fullmatch(c.pattern, value):
                raise error(f"{where} must be {c.what}, got {_number(value)}")


_SPLIT: dict[int, tuple[Any, tuple[Any, tuple[Any, ...], Any]]] = {}


def _split(hint: Any) -> tuple[Any, tuple[Any, ...], Any]:
    """(bare type, bounds, origin) of a hint; cached: every field of every message asks. By
    ``id``: hashing an ``Annotated`` hint runs typing's Python ``__hash__`` over its args (a
    third of parsing an offer); the hint is kept in the entry, so its id stays its own."""
    found = _SPLIT.get(id(hint))
    if found is not None and found[0] is hint:
        return found[1]
    bare, constraints = hint, ()
    if typing.get_origin(hint) is Annotated:
        bare, *extra = typing.get_args(hint)
        constraints = tuple(extra)
    out = (bare, constraints, typing.get_origin(bare))
    if len(_SPLIT) < 4096:  # hints are module-level objects: a few hundred at most
        _SPLIT[id(hint)] = (hint, out)
    return out


_INT64 = Range(INT64_MIN, INT64_MAX)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def coerce(
    value: Any,
    hint: Any,
    where: str,
    error: type[FedgeError],
    *,
    max_str: int | None = DEFAULT_MAX_STR,
) -> Any:
    """Check ``value`` against ``hint`` (and its bounds); return it, ints widened for floats.

    Nested dataclasses are built from objects with ``build`` (keys they do not declare are
    ignored: newer senders may add fields).
    """
    hint, constraints, origin = _split(hint)

    def inner(v: Any, h: Any, w: str) -> Any:
        return coerce(v, h, w, error, max_str=max_str)

    if hint is Any:
        out = value
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                out = inner(value, option, where)
                break
            except error:
                continue
        else:
            raise error(f"{where}: unexpected value {_number(value)}")
    elif hint is type(None):
        if value is not None:
            raise error(f"{where} must be null, got {_kind(value)}")
        out = None
    elif origin is typing.Literal:
        allowed = typing.get_args(hint)
        if isinstance(value, bool) or value not in allowed:
            choices = ", ".join(map(repr, allowed))
            raise error(f"{where} must be one of {choices}; got {_number(value)}")
        out = value
    elif hint is bool:
        if not isinstance(value, bool):
            raise error(f"{where} must be true or false, got {_kind(value)}")
        out = value
    elif hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise error(f"{where} must be an integer, got {_kind(value)}")
        _check_constraints(value, (*constraints, _INT64), where, error)
        return value  # bounds checked (once)
    elif hint is float:
        out = _finite(value, where, error)
    elif hint is str:
        if not isinstance(value, str):
            raise error(f"{where} must be a string, got {_kind(value)}")
        _check_constraints(value, constraints, where, error)  # the declared bound speaks first
        declared = any(isinstance(c, Len) and c.hi is not None for c in constraints)
        if max_str is not None and not declared and len(value) > max_str:  # the default
            raise error(f"{where} must have at most {max_str} chars, got {len(value)}")
        return value  # bounds checked (once: an inline delta's are ~26,000 characters)
    elif origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if isinstance(value, str) and len(value) <= 200:  # a TOML habit: one item unbracketed
            raise error(f"{where} must be a list, got the string {value!r}: write [{value!r}]")
        if not isinstance(value, list):
            raise error(f"{where} must be a list, got {_kind(value)}")
        _check_constraints(value, (*constraints, Len(0, DEFAULT_MAX_ITEMS)), where, error)
        out = [inner(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        key_t, val_t = typing.get_args(hint) or (str, Any)
        if not isinstance(value, dict):
            raise error(f"{where} must be an object, got {_kind(value)}")
        _check_constraints(value, (*constraints, Len(0, DEFAULT_MAX_ITEMS)), where, error)
        out = {}
        for k, v in value.items():
            key = inner(k, key_t, f"{where} key {_number(k)}")
            out[key] = inner(v, val_t, f"{where}.{k}")
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            check_instance(value, where, error, max_str=max_str)
            return value
        return build(hint, value, where, error, max_str=max_str)
    else:  # pragma: no cover - a field type this module does not know is a programming error
        raise TypeError(f"{where}: unsupported field type {hint!r}")
    _check_constraints(out, constraints, where, error)
    return out


def _finite(value: Any, where: str, error: type[FedgeError]) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise error(f"{where} must be a number, got {_kind(value)}")
    try:
        out = float(value)  # an int beyond float range overflows here
    except OverflowError:
        raise error(f"{where} must be a finite number, got {_number(value)}") from None
    if not math.isfinite(out):
        raise error(f"{where} must be a finite number, got {value!r}")
    return out


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    # resolving the (string) annotations costs ~0.3 ms a class; every received message needs
    # them, thousands a second at 10,000 devices: once per class is enough (classes don't change)
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls, include_extras=True)
    return hints


def build(
    cls: type,
    data: Any,
    where: str,
    error: type[FedgeError],
    *,
    max_str: int | None = DEFAULT_MAX_STR,
) -> Any:
    """Construct dataclass ``cls`` from a mapping, checking every field; then ``validate()``.

    Keys ``cls`` does not declare are ignored; a missing field without a default is an error.
    """
    if not isinstance(data, dict):
        raise error(f"{where} must be an object, got {_kind(data)}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            kwargs[f.name] = coerce(
                value, hints[f.name], f"{where}.{f.name}", error, max_str=max_str
            )
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise error(f"{where}: missing field '{f.name}'")
    obj = cls(**kwargs)
    _validate(obj)
    return obj


def check_instance(
    obj: Any,
    where: str,
    error: type[FedgeError],
    *,
    max_str: int | None = DEFAULT_MAX_STR,
    bounds: typing.Mapping[type, typing.Mapping[str, Any]] | None = None,
) -> None:
    """Check every field of an existing dataclass (recursively) against its declared bounds.

    ``bounds`` adds bounds for dataclasses whose annotations carry none (by class, then field).
    Ints given for float fields are widened in place (mutable dataclasses only).
    """
    hints = _hints(type(obj))
    extra = (bounds or {}).get(type(obj), {})
    prefix = f"{where}." if where else ""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        full = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_instance(value, full, error, max_str=max_str, bounds=bounds)
            continue
        hint = extra.get(f.name, hints[f.name])
        out = coerce(value, hint, full, error, max_str=max_str)
        if out is not value and type(out) is not type(value):
            try:
                setattr(obj, f.name, out)
            except dataclasses.FrozenInstanceError:
                pass
    _validate(obj)


def _validate(obj: Any) -> None:
    """Run the dataclass's own cross-field rules (``validate()``, raising ``error`` itself)."""
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()

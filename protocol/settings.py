"""Typed settings from one TOML file, every key overridable by ``FEDGE_...`` or ``--set``.

Precedence: dataclass defaults < TOML file < environment (``FEDGE_MQTT_URL`` for ``mqtt.url``)
< ``--set mqtt.url=...`` on the command line. Unknown keys are errors, not silently ignored.

Every key declares its range or allowed values (``Annotated[int, Range(1, 65536)]``, see
protocol.fields; for dataclasses owned elsewhere, the settings class's ``SETTING_BOUNDS``).
After the last override the whole object is checked, so a config that would stall a run is
refused at load with one line: ``rounds.batch_size must be >= 1, got 0``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from .errors import ConfigError
from .fields import Len, Match, OneOf, Range, check_instance
from .mqtt_link import MqttSettings
from .sqlite_samples import BLOB_DTYPES, DataSource

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")
Bounds = Mapping[type, Mapping[str, Any]]

OptionalPath = Annotated[str, Len(0, 4096)]

# Bounds for the shared option dataclasses (their modules declare plain types).
MQTT_BOUNDS: dict[str, Any] = {
    "url": Annotated[
        str,
        Match(
            r"mqtts?://(\[[0-9A-Fa-f:.]+\]|[^/\s:\[\]]+)(:[0-9]{1,5})?/?",
            "mqtt://host:port or mqtts://host:port",
        ),
    ],
    "username": Annotated[str, Len(0, 256)],
    "password": Annotated[str, Len(0, 4096)],
    "protocol": Annotated[str, OneOf("5", "3.1.1")],
    "ca_file": OptionalPath,
    "cert_file": OptionalPath,
    "key_file": OptionalPath,
    "keepalive": Annotated[int, Range(1, 65535)],  # an MQTT u16; 0 (off) hides dead links
    "session_expiry": Annotated[int, Range(0, 2**32 - 1)],  # an MQTT 5 u32
    "max_payload": Annotated[int, Range(1024, 268_435_455)],  # MQTT's largest packet
}
DATA_BOUNDS: dict[str, Any] = {
    "path": OptionalPath,
    "table": Annotated[str, Len(0, 256)],  # "" with a query
    "features": Annotated[list[Annotated[str, Len(1, 256)]], Len(0, 100_000)],
    "blob_dtype": Annotated[str, OneOf(*BLOB_DTYPES)],  # int64: token ids
    "blob_shape": Annotated[list[Annotated[int, Range(1, 2**31 - 1)]], Len(0, 8)],
    "label": Annotated[str, Len(1, 256)],
    "feature_scale": Annotated[float, Range(-1e30, 1e30)],
}
SHARED_BOUNDS: dict[type, Mapping[str, Any]] = {MqttSettings: MQTT_BOUNDS, DataSource: DATA_BOUNDS}


def _plain(hint: Any) -> Any:
    """The type under ``Annotated[...]``."""
    if typing.get_origin(hint) is Annotated:
        return typing.get_args(hint)[0]
    return hint


def _convert(text: str, hint: Any, key: str) -> Any:
    """Turn an override string into the field's type (bounds are checked afterwards)."""
    hint = _plain(hint)
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if origin is list:
            value = (
                json.loads(text)
                if text.strip().startswith("[")
                else [s for s in text.split(",") if s]
            )
            if not isinstance(value, list):
                raise ValueError(text)
            (item,) = typing.get_args(hint) or (str,)
            item_t = _plain(item)
            return [
                v if isinstance(v, item_t) else _convert(str(v), item_t, key)
                for v in value
            ]  # fmt: skip
    except (ValueError, RecursionError):
        raise ConfigError(
            f"setting '{key}': cannot read {text[:80]!r} as {getattr(hint, '__name__', hint)}"
        ) from None
    return text


def _table_class(obj: Any, key: str) -> type | None:
    """The dataclass of a ``dict[str, SomeDataclass]`` field (``data.inputs``), else None."""
    hint = _plain(typing.get_type_hints(type(obj)).get(key))
    if typing.get_origin(hint) is not dict:
        return None
    value_t = _plain(typing.get_args(hint)[1])
    return value_t if isinstance(value_t, type) and dataclasses.is_dataclass(value_t) else None


def _tables(cls: type, value: Any, full: str) -> dict[str, Any]:
    """``{name: cls}`` from a table of tables (``[data.inputs.tokens]``); unknown keys refused."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"setting '{full}' must be a table of tables, e.g. [{full}.NAME]")
    out = {}
    for name, table in value.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"setting '{full}.{name}' must be a table")
        item = cls()
        _apply(item, table, f"{full}.{name}.")
        out[name] = item
    return out


def _apply(obj: Any, data: Mapping[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        full = f"{where}{key}"
        if key not in names:
            raise ConfigError(f"unknown setting '{full}'; known here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        table = _table_class(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"setting '{full}' must be a table")
            _apply(current, value, f"{full}.")
        elif table is not None:
            setattr(obj, key, _tables(table, value, full))
        else:
            setattr(obj, key, value)  # type and bounds: check_settings, after every source


def check_settings(settings: Any) -> None:
    """Check every key of a settings object against its type and bounds; raise ConfigError.

    ``load_settings`` calls it; call it yourself for a settings object built in code.
    """
    bounds: dict[type, Mapping[str, Any]] = dict(SHARED_BOUNDS)
    bounds.update(getattr(type(settings), "SETTING_BOUNDS", {}))
    check_instance(settings, "", ConfigError, max_str=None, bounds=bounds)


def _set_path(obj: Any, dotted: str, text: str) -> None:
    parts = dotted.split(".")
    target = obj
    i = 0
    while i < len(parts) - 1:
        part = parts[i]
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            raise ConfigError(f"unknown setting '{dotted}'")
        table = _table_class(target, part)
        if table is not None:  # data.inputs.tokens.blob_column: the entry, made if missing
            if i + 2 >= len(parts):
                raise ConfigError(
                    f"setting '{dotted}' is a table: set one of its keys, e.g. "
                    f"'{'.'.join(parts[: i + 1])}.tokens.blob_column=ids'"
                )
            entries = getattr(target, part)
            target = entries.setdefault(parts[i + 1], table())
            i += 2
            continue
        target = getattr(target, part)
        i += 1
    hints = typing.get_type_hints(type(target))
    if parts[-1] not in hints or dataclasses.is_dataclass(getattr(target, parts[-1])):
        raise ConfigError(f"unknown setting '{dotted}'")
    setattr(target, parts[-1], _convert(text, hints[parts[-1]], dotted))


def _env_keys(obj: Any, prefix: str) -> dict[str, str]:
    """Map FEDGE_SECTION_KEY environment names to dotted keys."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            for env, dotted in _env_keys(value, f"{prefix}{f.name.upper()}_").items():
                out[env] = f"{f.name}.{dotted}"
        elif _table_class(obj, f.name) is not None:
            continue  # per-entry tables (data.inputs.NAME) come from the file or --set
        else:
            out[f"{prefix}{f.name.upper()}"] = f.name
    return out


def load_settings(
    cls: type[T],
    path: str | Path | None,
    *,
    overrides: list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` from defaults, the TOML file, ``FEDGE_*`` variables and ``--set`` items."""
    settings = cls()
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            data = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        _apply(settings, data, "")
    env = os.environ if env is None else env
    for env_name, dotted in _env_keys(settings, "FEDGE_").items():
        if env_name in env:
            _set_path(settings, dotted, env[env_name])
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes key=value, got {item!r}")
        _set_path(settings, key.strip(), value)
    check_settings(settings)
    return settings
